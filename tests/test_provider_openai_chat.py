"""OpenAIModel (Chat Completions) through the real openai SDK on a replay transport.

Every test runs the sync and async paths (and both wires) and expects the same chunks.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from replay import Replay, real_files, real_fixture, sse, stored
from replay import Reply as Served
from replay import record as rec

from rxcontext.chunks import Chunk, ChunkKind, Reply, ToolCall, Usage
from rxcontext.errors import ProviderError
from rxcontext.providers.base import Request, reply_from_chunks
from rxcontext.providers.openai import REASONING_FIELD, OpenAIModel, OpenAIResponsesModel
from rxcontext.records import RecordType
from rxcontext.tools import Tool

KEY = "sk-test-RXCONTEXT0123456789secret"
MODES = ["sync", "async"]
WIRES = ["sdk", "fast"]


def model(replay: Replay, wire: str = "sdk", **params: Any) -> OpenAIModel:
    return OpenAIModel(
        "gpt-4o-mini",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
        **params,
    )


HELLO = Request([rec(RecordType.PROMPT, "hi")])


def collect(m: OpenAIModel, mode: str, request: Request = HELLO) -> list[Chunk]:
    """All chunks of one call; on error, ``exc.chunks`` holds those delivered before it."""
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
    """Chunks of the sync path, asserted identical to the async path's."""
    sync = collect(model(Replay(body), wire), "sync")
    assert collect(model(Replay(body), wire), "async") == sync
    return sync


def both_error(body: bytes | Path | Served, wire: str = "sdk") -> tuple[ProviderError, list[Chunk]]:
    """The error (and chunks before it) of the sync path, asserted the same on async."""
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
    assert type(err.__cause__) is type(aerr.__cause__)
    return err, chunks


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict:
    """A chat.completion.chunk payload with one choice (or ``choices=[]`` via extra)."""
    base: dict[str, Any] = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
    }
    if delta is not None:
        base["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    base.update(extra)
    return base


def call(index: int, args: str | None = None, id: str | None = None, name: str | None = None):
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    out: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        out["id"] = id
        out["type"] = "function"
    return {"tool_calls": [out]}


def usage(p: int, c: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def check_shape(chunks: Sequence[Chunk]) -> None:
    """Exactly one DONE, last; no empty text/thinking deltas."""
    assert [c.kind for c in chunks].count(ChunkKind.DONE) == 1
    assert chunks[-1].kind is ChunkKind.DONE
    for c in chunks:
        if c.kind in (ChunkKind.TEXT, ChunkKind.THINKING):
            assert c.text


# --- recorded streams -------------------------------------------------------------------

GROQ_THINKING_1 = (
    "We need to call the tool with invalid parameters first, then second call with valid "
    "args. The user wants us to test error handling. So first call should have wrong "
    'parameters (e.g., missing required "name" or extra param). The tool expects only '
    '"name". If we send extra property, that might cause error. Or missing "name". We\'ll do '
    'a call with missing name: {}. Then second call with name: "test". Let\'s do that.'
)
GROQ_THINKING_2 = (
    'We need to call the function with correct parameter "name". Provide a name, e.g., "example".'
)

EXPECTED: dict[str, Reply] = {
    "azure_prompt_filter_results.sse": Reply(
        text="Why did the Opentelemetry developer bring a ladder to the coding competition? "
        "\n\nBecause they wanted to reach new traces!",
        finish_reason="stop",
        response_id="chatcmpl-9HpbaAXyt0cAnlWvI8kUAFpZt5jyQ",
    ),
    "groq_event_error_tool_use_failed.2.sse": Reply(
        thinking=GROQ_THINKING_2,
        tool_calls=(
            ToolCall.parse(
                "fc_bfb39741-3748-4def-9886-a93fc9c64a90",
                "get_something_by_name",
                '{"name":"example"}',
            ),
        ),
        usage=Usage(304, 49, 353, 0, 23),
        finish_reason="tool_calls",
        response_id="chatcmpl-e35442a8-12c0-4fb4-8be4-0e51727ce7b7",
    ),
    "groq_event_error_tool_use_failed.3.sse": Reply(
        text="The tool returned the expected result for the valid call.",
        thinking="The user wants to test error handling by calling tool with non-existent "
        "parameters first (we did) and then second try with valid args. We have succeeded. "
        "Now respond concisely.",
        usage=Usage(339, 58, 397, 0, 38),
        finish_reason="stop",
        response_id="chatcmpl-935610b8-ec6a-4b1d-8a58-84b34ab0590e",
    ),
    # The first event starts with a stray space (" data:"): SSE drops it, as the SDK does.
    "openrouter_tool_args_key_missing.1.sse": Reply(
        tool_calls=(ToolCall.parse("llm_version:0", "llm_version", "{}"),),
        usage=Usage(56, 12, 68, 0, 0),
        finish_reason="tool_calls",
        response_id="gen-1753248108-FGOxpkEzFEwhNKSPpI4a",
    ),
    "openrouter_tool_args_key_missing.2.sse": Reply(
        text="The installed version of LLM on this system is 0.fixed-version.",
        usage=Usage(105, 16, 121, 0, 0),
        finish_reason="stop",
        response_id="gen-1753248104-uf1xqJDBrAUCJ4g8apK8",
    ),
    "parallel_tool_calls_gpt35.sse": Reply(
        tool_calls=(
            ToolCall.parse(
                "call_cCPjAyfwTzboEKjVlqFrArNF",
                "get_current_weather",
                '{"location": "San Francisco"}',
                0,
            ),
            ToolCall.parse(
                "call_Zi4He1Ns0mozwT6f85nW1BOW", "get_current_weather", '{"location": "Boston"}', 1
            ),
        ),
        finish_reason="tool_calls",
        response_id="chatcmpl-9g58noIjRkOeNNxfFsFfcNjhXlul7",
    ),
    "tool_call_roundtrip_gpt4o_mini.1.sse": Reply(
        tool_calls=(
            ToolCall.parse("call_1EYWDzueHEp8OsB8jJSEp7WB", "multiply", '{"a":1231,"b":2331}'),
        ),
        usage=Usage(54, 20, 74, 0, 0),
        finish_reason="tool_calls",
        response_id="chatcmpl-BWlJBDk2xe66hjff60joVYpXi1hh4",
    ),
    "tool_call_roundtrip_gpt4o_mini.2.sse": Reply(
        text="The result of \\( 1231 \\times 2331 \\) is \\( 2,869,461 \\).",
        usage=Usage(87, 26, 113, 0, 0),
        finish_reason="stop",
        response_id="chatcmpl-BWlJCN7VZTtSHROczp0AbrjFGhRMA",
    ),
    # The usage chunk is followed by one more choices=[] chunk (moderation): usage kept.
    "usage_then_moderation_chunk_gpt5.sse": Reply(
        text="Paris.",
        usage=Usage(13, 11, 24, 0, 0),
        finish_reason="stop",
        response_id="chatcmpl-E4Rjs6IxaJVge9Ntk5keJsaeDy6vS",
    ),
}
ERRORS = {
    "groq_event_error_tool_use_failed.1.sse",
    "openrouter_midstream_error_after_length.sse",
}


def test_every_recording_is_covered() -> None:
    names = {p.name for p in real_files("openai_chat", "*.sse")}
    if not names:
        pytest.skip("../shared/fixtures/real is absent")
    assert names == set(EXPECTED) | ERRORS


@pytest.mark.fixtures
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream(name: str, wire: str) -> None:
    path = real_fixture(f"openai_chat/{name}")
    chunks = both(path, wire)
    check_shape(chunks)
    assert reply_from_chunks(chunks) == EXPECTED[name]


@pytest.mark.fixtures
@pytest.mark.parametrize("wire", WIRES)
def test_groq_event_error_after_reasoning(wire: str) -> None:
    path = real_fixture("openai_chat/groq_event_error_tool_use_failed.1.sse")
    err, chunks = both_error(path, wire)
    assert isinstance(err.__cause__, openai.APIError)
    assert (err.status_code, err.retryable, err.error_type) == (400, False, "invalid_request_error")
    assert "Tool call validation failed" in str(err)
    # The reasoning streamed before the error event reached the subscriber.
    assert reply_from_chunks(chunks).thinking == GROQ_THINKING_1
    assert all(c.kind is ChunkKind.THINKING for c in chunks)


@pytest.mark.fixtures
@pytest.mark.parametrize("wire", WIRES)
def test_openrouter_error_payload_after_finish_reason(wire: str) -> None:
    path = real_fixture("openai_chat/openrouter_midstream_error_after_length.sse")
    err, chunks = both_error(path, wire)
    assert isinstance(err.__cause__, openai.APIError)
    assert (err.status_code, err.retryable) == (400, False)
    assert "Token limit reached" in str(err)
    assert reply_from_chunks(chunks).thinking == "We need to respond to a greeting. The user"


# --- second turn: what the SDK actually sent ---------------------------------------------


def recorded(path: str) -> dict[str, Any]:
    return json.loads(real_fixture(path).read_text())


def normalise(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with arguments parsed and empty assistant turns dropped (for comparison)."""
    out = []
    for m in messages:
        m = dict(m)
        if m["role"] == "assistant" and not m.get("tool_calls") and not m.get("content"):
            continue  # llm sends an empty assistant message before the tool-call one
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {
                    "id": c["id"],
                    "name": c["function"]["name"],
                    "arguments": json.loads(c["function"]["arguments"]),
                }
                for c in m["tool_calls"]
            ]
            m.pop("content", None)
        out.append(m)
    return out


@pytest.mark.fixtures
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_second_turn_request_matches_recording(mode: str, wire: str) -> None:
    r1 = real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.1.sse")
    r2 = real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse")
    replay = Replay(r1, r2)
    m = model(replay, wire)
    multiply = (
        Tool("multiply", "Multiply two numbers.").number("a").number("b")  # schema differs
    )
    history = [rec(RecordType.PROMPT, "What is 1231 * 2331?")]
    first = reply_from_chunks(collect(m, mode, Request(history, tools=[multiply])))
    history += stored(first)
    history.append(
        rec(
            RecordType.TOOL_OUTPUT,
            "2869461",
            tool_call_id=first.tool_calls[0].id,
            tool_name="multiply",
        )
    )
    second = reply_from_chunks(collect(m, mode, Request(history, tools=[multiply])))
    assert second == EXPECTED["tool_call_roundtrip_gpt4o_mini.2.sse"]

    want = recorded("openai_chat/tool_call_roundtrip_gpt4o_mini.2.request.json")
    sent = replay.bodies[1]
    assert normalise(sent["messages"]) == normalise(want["messages"])
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1EYWDzueHEp8OsB8jJSEp7WB",
                "type": "function",
                "function": {"name": "multiply", "arguments": '{"a":1231,"b":2331}'},
            }
        ],
    }
    assert sent["stream"] is True
    assert sent["stream_options"] == want["stream_options"] == {"include_usage": True}
    assert [t["function"]["name"] for t in sent["tools"]] == ["multiply"]
    assert replay.bodies[0]["messages"] == [{"role": "user", "content": "What is 1231 * 2331?"}]


@pytest.mark.fixtures
@pytest.mark.parametrize("wire", WIRES)
def test_groq_third_turn_request_matches_recording(wire: str) -> None:
    """Round 3 of the Groq recording: system prompt, an earlier failed call, the good call."""
    want = recorded("openai_chat/groq_event_error_tool_use_failed.3.request.json")
    replay = Replay(
        real_fixture("openai_chat/groq_event_error_tool_use_failed.2.sse"),
        real_fixture("openai_chat/groq_event_error_tool_use_failed.3.sse"),
    )
    m = model(replay, wire)
    w = want["messages"]
    history = [
        rec(RecordType.SYSTEM_PROMPT, w[0]["content"]),
        rec(RecordType.PROMPT, w[1]["content"]),
        rec(RecordType.MODEL_RESP, w[2]["content"]),
        rec(
            RecordType.TOOL_CALL,
            w[2]["tool_calls"][0]["function"]["arguments"],
            tool_call_id=w[2]["tool_calls"][0]["id"],
            tool_name="get_something_by_name",
        ),
        rec(RecordType.TOOL_OUTPUT, w[3]["content"], tool_call_id=w[3]["tool_call_id"]),
    ]
    second = reply_from_chunks(collect(m, "sync", Request(history)))
    history += stored(second)
    history.append(
        rec(RecordType.TOOL_OUTPUT, w[5]["content"], tool_call_id=second.tool_calls[0].id)
    )
    collect(m, "sync", Request(history))
    sent = replay.bodies[1]["messages"]
    assert sent[:4] == w[:4]
    # pydantic-ai inlined the reasoning as "<think>" text. Groq streamed it as `reasoning`,
    # not DeepSeek's `reasoning_content`: only the latter goes back (see
    # test_deepseek_reasoning_content_goes_back_with_its_assistant_messages), so this
    # reasoning is sent as nothing.
    assert sent[4] == {**w[4], "content": None} and sent[4]["tool_calls"] == w[4]["tool_calls"]
    assert w[4]["content"] == f"<think>\n{GROQ_THINKING_2}\n</think>"
    assert sent[5] == w[5]


# --- complete(): the non-streaming API gives the streamed Reply ---------------------------


def completion_body(
    content: str | None,
    calls: Sequence[tuple[str, str, str]] = (),
    id: str = "chatcmpl-BWlJBDk2xe66hjff60joVYpXi1hh4",
    **message_extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, **message_extra}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in calls
        ]
    return {
        "id": id,
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(54, 20),
    }


def json_reply(body: dict[str, Any], status: int = 200) -> Served:
    return Served(json.dumps(body).encode(), status, {"content-type": "application/json"})


@pytest.mark.parametrize("mode", MODES)
def test_complete_equals_streamed_tool_call(mode: str) -> None:
    streamed = EXPECTED["tool_call_roundtrip_gpt4o_mini.1.sse"]
    body = completion_body(
        None, [("call_1EYWDzueHEp8OsB8jJSEp7WB", "multiply", '{"a":1231,"b":2331}')]
    )
    replay = Replay(json_reply(body))
    m = model(replay)
    got = m.complete(HELLO) if mode == "sync" else asyncio.run(m.acomplete(HELLO))
    assert got == streamed
    assert "stream" not in replay.bodies[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_complete_equals_streamed_text_and_reasoning(mode: str, wire: str) -> None:
    stream = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        chunk(None, choices=[], usage=usage(54, 20)),
        "[DONE]",
    )
    streamed = reply_from_chunks(both(stream, wire))
    replay = Replay(
        json_reply(completion_body("Hello", id="chatcmpl-x", reasoning_content="Thinking."))
    )
    m = model(replay, wire)
    got = m.complete(HELLO) if mode == "sync" else asyncio.run(m.acomplete(HELLO))
    assert got == streamed
    assert got.text == "Hello" and got.thinking == "Thinking." and got.usage == Usage(54, 20, 74)
    # Reasoning from `reasoning_content` is noted, so that it goes back in that field.
    assert got.metadata == streamed.metadata == {REASONING_FIELD: "reasoning_content"}


# --- crafted edge cases ---------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_empty_choices_role_only_and_empty_deltas_make_no_chunks(wire: str) -> None:
    stream = sse(
        # Azure's first chunk: no choices, empty id.
        {**chunk(None, choices=[]), "id": "", "prompt_filter_results": []},
        chunk({"role": "assistant"}),
        chunk({"role": "assistant", "content": ""}),
        chunk({}),
        chunk({"content": None, "refusal": None}),
        chunk({"content": "ok"}),
        chunk({}, "stop"),
        chunk(None, choices=[], usage=usage(3, 1)),
        "[DONE]",
    )
    chunks = both(stream, wire)
    assert chunks == [
        Chunk(ChunkKind.TEXT, "ok"),
        Chunk(ChunkKind.USAGE, usage=Usage(3, 1, 4)),
        Chunk(ChunkKind.DONE, finish_reason="stop", response_id="chatcmpl-x", usage=Usage(3, 1, 4)),
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_interleaved_tool_calls_keyed_by_index(wire: str) -> None:
    stream = sse(
        chunk({"role": "assistant", "content": None, **call(0, "", "call_a", "weather")}),
        chunk(call(1, "", "call_b", "time")),
        chunk(call(0, '{"city"')),
        chunk(call(1, '{"tz":')),
        chunk(call(0, ': "Paris"}')),
        chunk(call(1, ' "CET"}')),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    chunks = both(stream, wire)
    check_shape(chunks)
    assert chunks[:6] == [
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call_a", "weather"),
        Chunk(ChunkKind.TOOL_CALL, "", 1, "call_b", "time"),
        Chunk(ChunkKind.TOOL_CALL, '{"city"', 0),
        Chunk(ChunkKind.TOOL_CALL, '{"tz":', 1),
        Chunk(ChunkKind.TOOL_CALL, ': "Paris"}', 0),
        Chunk(ChunkKind.TOOL_CALL, ' "CET"}', 1),
    ]
    reply = reply_from_chunks(chunks)
    assert [(c.id, c.name, dict(c.arguments)) for c in reply.tool_calls] == [
        ("call_a", "weather", {"city": "Paris"}),
        ("call_b", "time", {"tz": "CET"}),
    ]
    assert reply.finish_reason == "tool_calls"


@pytest.mark.parametrize("wire", WIRES)
def test_id_and_name_repeated_on_every_fragment_go_out_once(wire: str) -> None:
    stream = sse(
        chunk(call(0, '{"a":', "call_1", "f")),
        chunk(call(0, " 1}", "call_1", "f")),
        chunk({}, "tool_calls"),
    )
    chunks = both(stream, wire)
    assert chunks[:2] == [
        Chunk(ChunkKind.TOOL_CALL, '{"a":', 0, "call_1", "f"),
        Chunk(ChunkKind.TOOL_CALL, " 1}", 0),
    ]
    assert reply_from_chunks(chunks).tool_calls == (ToolCall.parse("call_1", "f", '{"a": 1}'),)


@pytest.mark.parametrize("wire", WIRES)
def test_whole_arguments_at_once_and_missing_arguments_key(wire: str) -> None:
    stream = sse(
        chunk(call(0, None, "call_1", "now")),  # no "arguments" key at all
        chunk(call(1, '{"q": "x"}', "call_2", "search")),  # everything in one fragment
        chunk(call(0, "{}")),
        chunk({}, "tool_calls"),
    )
    chunks = both(stream, wire)
    assert chunks[:3] == [
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call_1", "now"),
        Chunk(ChunkKind.TOOL_CALL, '{"q": "x"}', 1, "call_2", "search"),
        Chunk(ChunkKind.TOOL_CALL, "{}", 0),
    ]
    reply = reply_from_chunks(chunks)
    assert [(c.id, c.name, c.raw, c.error) for c in reply.tool_calls] == [
        ("call_1", "now", "{}", None),
        ("call_2", "search", '{"q": "x"}', None),
    ]


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_fields_become_thinking(field: str, wire: str) -> None:
    stream = sse(
        chunk({"role": "assistant", field: "Let me "}),
        chunk({field: "see."}),
        # Some servers send both names with the same text: once only.
        chunk({"reasoning_content": "!", "reasoning": "!"}),
        chunk({field: None, "content": "Yes."}),
        chunk({}, "stop"),
    )
    chunks = both(stream, wire)
    assert chunks[:4] == [
        Chunk(ChunkKind.THINKING, "Let me "),
        Chunk(ChunkKind.THINKING, "see."),
        Chunk(ChunkKind.THINKING, "!"),
        Chunk(ChunkKind.TEXT, "Yes."),
    ]
    reply = reply_from_chunks(chunks)
    assert (reply.thinking, reply.text) == ("Let me see.!", "Yes.")
    assert "thinking_blocks" not in reply.metadata


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("reason", ["length", "content_filter", "function_call", "eos"])
def test_finish_reason_passes_unchanged(reason: str, wire: str) -> None:
    chunks = both(sse(chunk({"content": "a"}), chunk({}, reason), "[DONE]"), wire)
    assert chunks[-1] == Chunk(ChunkKind.DONE, finish_reason=reason, response_id="chatcmpl-x")


@pytest.mark.parametrize("wire", WIRES)
def test_usage_details_and_usage_replaces(wire: str) -> None:
    stream = sse(
        chunk({"content": "a"}, usage=usage(10, 1)),
        chunk({}, "stop", usage=usage(10, 7, cached=4, reasoning=5)),
        "[DONE]",
    )
    chunks = both(stream, wire)
    final = Usage(10, 7, 17, 4, 5)
    assert [c.usage for c in chunks if c.kind is ChunkKind.USAGE] == [Usage(10, 1, 11), final]
    assert chunks[-1].usage == final
    assert reply_from_chunks(chunks).usage == final


@pytest.mark.parametrize("wire", WIRES)
def test_stream_without_done_marker_still_ends_with_done(wire: str) -> None:
    chunks = both(sse(chunk({"content": "a"}), chunk({}, "stop")), wire)
    assert [c.kind for c in chunks] == [ChunkKind.TEXT, ChunkKind.DONE]


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("error", "retryable", "status", "error_type"),
    [
        (
            {"message": "The server had an error", "type": "server_error"},
            True,
            None,
            "server_error",
        ),
        ({"message": "slow down", "code": 429}, True, 429, None),
        ({"message": "bad", "type": "invalid_request_error"}, False, None, "invalid_request_error"),
        ("boom", False, None, None),
    ],
)
def test_error_payload_mid_stream(
    error: Any, retryable: bool, status: int | None, error_type: str | None, wire: str
) -> None:
    stream = sse(chunk({"content": "par"}), {"error": error}, chunk({"content": "never"}))
    err, chunks = both_error(stream, wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "par")]
    assert (err.retryable, err.status_code, err.error_type) == (retryable, status, error_type)
    assert isinstance(err.__cause__, openai.APIError)
    assert err.provider == "openai"


@pytest.mark.parametrize("wire", WIRES)
def test_groq_style_event_error(wire: str) -> None:
    body = {"error": {"message": "rate limited", "type": "rate_limit_error", "status_code": 503}}
    stream = sse(chunk({"content": "a"}), body, event_names=[None, "error"])
    err, _ = both_error(stream, wire)
    assert (err.retryable, err.status_code, err.error_type) == (True, 503, "rate_limit_error")


@pytest.mark.parametrize("wire", WIRES)
def test_invalid_json_frame(wire: str) -> None:
    err, chunks = both_error(sse(chunk({"content": "a"}), "{not json"), wire)
    assert isinstance(err.__cause__, json.JSONDecodeError)
    assert (err.error_type, err.retryable) == ("invalid_json", False)
    assert chunks == [Chunk(ChunkKind.TEXT, "a")]


def error_body(message: str, type_: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("status", "retryable", "headers", "retry_after"),
    [
        (400, False, {}, None),
        (401, False, {}, None),
        (403, False, {}, None),
        (404, False, {}, None),
        (408, True, {}, None),
        (409, True, {}, None),
        (429, True, {"retry-after": "7"}, 7.0),
        (429, True, {"retry-after-ms": "1500"}, 1.5),
        (500, True, {}, None),
        (503, True, {}, None),
    ],
)
def test_http_errors(
    status: int, retryable: bool, headers: dict[str, str], retry_after: float | None, wire: str
) -> None:
    body = error_body(f"Incorrect API key provided: {KEY}", "invalid_request_error", "bad")
    served = Served(body, status, {"content-type": "application/json", **headers})
    err, chunks = both_error(served, wire)
    assert chunks == []
    assert (err.status_code, err.retryable, err.retry_after) == (status, retryable, retry_after)
    assert err.error_type == "invalid_request_error"
    assert isinstance(err.__cause__, openai.APIStatusError)
    assert err.__cause__.status_code == status
    # The key the server quoted back is masked everywhere, the SDK's exception included.
    for text in (str(err), repr(err), str(err.__cause__), repr(err.__cause__)):
        assert KEY not in text


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (httpx2.ReadError("connection reset by peer"), "connection_error"),
        (httpx2.DecodingError("corrupt gzip body"), "connection_error"),
        (httpx2.RemoteProtocolError("peer closed connection"), "connection_error"),
        (httpx2.ReadTimeout("read timed out"), "timeout"),
    ],
)
def test_transport_error_mid_stream(error: Exception, error_type: str, wire: str) -> None:
    body = sse(chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop"))
    err, chunks = both_error(Served(body, cut_after=2, error=error), wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "Hel"), Chunk(ChunkKind.TEXT, "lo")]
    assert (err.retryable, err.error_type, err.status_code) == (True, error_type, None)
    assert err.__cause__ is not None


def failing_clients(error: Exception, wire: str) -> OpenAIModel:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise error

    transport = httpx2.MockTransport(handler)
    return OpenAIModel(
        "m",
        client=openai.OpenAI(
            api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=transport)
        ),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
        ),
        wire=wire,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (httpx2.ConnectError("name resolution failed"), "connection_error"),
        (httpx2.ConnectTimeout("connect timed out"), "timeout"),
    ],
)
def test_transport_error_at_connect(
    error: Exception, error_type: str, mode: str, wire: str
) -> None:
    m = failing_clients(error, wire)
    with pytest.raises(ProviderError) as info:
        collect(m, mode)
    assert (info.value.retryable, info.value.error_type) == (True, error_type)
    assert isinstance(info.value.__cause__, openai.APIConnectionError)
    with pytest.raises(ProviderError):
        m.complete(HELLO) if mode == "sync" else asyncio.run(m.acomplete(HELLO))


@pytest.mark.parametrize("mode", MODES)
def test_complete_http_error(mode: str) -> None:
    served = Served(error_body("slow down", "rate_limit_exceeded"), 429, {"retry-after": "2"})
    m = model(Replay(served))
    with pytest.raises(ProviderError) as info:
        m.complete(HELLO) if mode == "sync" else asyncio.run(m.acomplete(HELLO))
    assert (info.value.status_code, info.value.retryable, info.value.retry_after) == (
        429,
        True,
        2.0,
    )


# --- cancellation ------------------------------------------------------------------------


LONG = sse(*[chunk({"content": f"w{i} "}) for i in range(20)], chunk({}, "stop"), "[DONE]")


@pytest.mark.parametrize("wire", WIRES)
def test_closing_the_generator_closes_the_response(wire: str) -> None:
    replay = Replay(LONG)
    gen = model(replay, wire).iter_chunks(HELLO)
    assert next(gen) == Chunk(ChunkKind.TEXT, "w0 ")
    assert replay.closed == 0
    gen.close()
    assert replay.closed == 1
    assert replay.delivered < 20


@pytest.mark.parametrize("wire", WIRES)
def test_garbage_collected_generator_closes_the_response(wire: str) -> None:
    replay = Replay(LONG)
    gen = model(replay, wire).iter_chunks(HELLO)
    next(gen)
    del gen
    gc.collect()
    assert replay.closed == 1


@pytest.mark.parametrize("wire", WIRES)
def test_aclose_closes_the_response(wire: str) -> None:
    replay = Replay(LONG)

    async def run() -> None:
        gen = model(replay, wire).aiter_chunks(HELLO)
        assert await anext(gen) == Chunk(ChunkKind.TEXT, "w0 ")
        await gen.aclose()

    asyncio.run(run())
    assert replay.closed == 1


@pytest.mark.parametrize("wire", WIRES)
def test_async_task_cancellation_closes_the_response(wire: str) -> None:
    replay = Replay(LONG)

    async def run() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in model(replay, wire).aiter_chunks(HELLO):
                started.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert replay.closed == 1


# --- requests ----------------------------------------------------------------------------


def test_request_body_maps_records_tools_params_and_options() -> None:
    replay = Replay(sse(chunk({}, "stop")))
    m = model(replay, temperature=0.2, top_p=0.5)
    records = [
        rec(RecordType.SYSTEM_PROMPT, "Be brief."),
        rec(RecordType.PROMPT, "Weather in Paris and Rome?"),
        rec(RecordType.MODEL_RESP, "Let me look.", metadata={"thinking_blocks": [{"x": 1}]}),
        rec(RecordType.TOOL_CALL, '{"city":"Paris"}', tool_call_id="c1", tool_name="weather"),
        rec(RecordType.TOOL_CALL, '{"city":"Rome"}', tool_call_id="c2", tool_name="weather"),
        rec(RecordType.TOOL_OUTPUT, "sunny", tool_call_id="c1", tool_name="weather"),
        rec(RecordType.TOOL_OUTPUT, "rainy", tool_call_id="c2", tool_name="weather"),
        rec(RecordType.MODEL_RESP, "Paris sunny, Rome rainy."),
        rec(RecordType.PROMPT, "Thanks"),
    ]
    weather = Tool("weather", "Current weather").string("city", "City name")
    request = Request(
        records,
        tools=[weather],
        max_output_tokens=100,
        options={"top_p": 0.9, "stream_options": {"include_obfuscation": False}},
    )
    list(m.iter_chunks(request))
    body = replay.bodies[0]
    assert body["model"] == "gpt-4o-mini"
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.2, 0.9, 100)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["tools"] == [weather.to_openai_chat()]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rainy"},
        {"role": "assistant", "content": "Paris sunny, Rome rainy."},
        {"role": "user", "content": "Thanks"},
    ]


def test_tool_calls_without_a_reply_record_form_their_own_turn() -> None:
    replay = Replay(sse(chunk({}, "stop")))
    records = [
        rec(RecordType.PROMPT, "go"),
        rec(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="now"),
        rec(RecordType.TOOL_OUTPUT, "12:00", tool_call_id="c1", tool_name="now"),
    ]
    list(model(replay).iter_chunks(Request(records)))
    assert replay.bodies[0]["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
        ],
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_cut_tool_call_arguments_go_back_as_an_empty_object(mode: str, wire: str) -> None:
    """A call cut by the token limit is stored as the model wrote it, but sent back as
    ``"{}"``: servers that parse stored arguments (vLLM, SGLang) refuse the cut text, and
    AnthropicModel and GeminiModel send such a call back empty too."""
    replay = Replay(
        sse(
            chunk({"role": "assistant", "content": "ok"}),
            chunk(call(0, '{"city": "Par', id="call_cut", name="weather")),
            chunk({}, "length"),
        ),
        sse(chunk({"content": "sorry"}), chunk({}, "stop")),
    )
    m = model(replay, wire)
    history = [rec(RecordType.PROMPT, "Weather in Paris?")]
    first = reply_from_chunks(collect(m, mode, Request(history)))
    history += stored(first)
    assert history[-1].content == '{"city": "Par'  # the record keeps what the model wrote
    history.append(rec(RecordType.TOOL_OUTPUT, "error: cut", tool_call_id="call_cut"))
    collect(m, mode, Request(history))
    assert replay.bodies[1]["messages"][1] == {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [
            {
                "id": "call_cut",
                "type": "function",
                "function": {"name": "weather", "arguments": "{}"},
            }
        ],
    }


@pytest.mark.parametrize("wire", WIRES)
def test_tool_call_arguments_that_are_no_json_object_go_back_empty(wire: str) -> None:
    """Only a JSON object goes back as written (byte for byte); anything else as ``"{}"``."""
    sent_as = {
        '{ "a" : [1, 2] }': '{ "a" : [1, 2] }',
        "{}": "{}",
        "": "{}",
        "  ": "{}",
        '{"a": 1': "{}",
        "[1, 2]": "{}",
        '"a string"': "{}",
        "null": "{}",
        '{"a": 1} trailing': "{}",
    }
    records = [rec(RecordType.PROMPT, "go"), rec(RecordType.MODEL_RESP, "calling")]
    for i, raw in enumerate(sent_as):
        records.append(rec(RecordType.TOOL_CALL, raw, tool_call_id=f"c{i}", tool_name="f"))
    for i in range(len(sent_as)):
        records.append(rec(RecordType.TOOL_OUTPUT, "done", tool_call_id=f"c{i}", tool_name="f"))
    for mode in MODES:
        replay = Replay(sse(chunk({}, "stop")))
        collect(model(replay, wire), mode, Request(records))
        calls = replay.bodies[0]["messages"][1]["tool_calls"]
        assert [c["function"]["arguments"] for c in calls] == list(sent_as.values())


def deepseek(*deltas: dict[str, Any], finish: str) -> bytes:
    """A DeepSeek thinking-mode stream: ``reasoning_content`` deltas, then the answer."""
    return sse(*(chunk(d) for d in deltas), chunk({}, finish), "[DONE]")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_deepseek_reasoning_content_goes_back_with_its_assistant_messages(
    mode: str, wire: str
) -> None:
    """DeepSeek (thinking mode) refuses a request whose assistant messages of a turn with
    tool calls lack their ``reasoning_content`` (400 "Missing `reasoning_content` field in
    the assistant message at message index N"), in that turn's tool loop and in every
    later request; in a turn without tool calls it ignores it. A reply whose reasoning came
    in ``reasoning_content`` sends it back on its assistant message, in every request."""
    replay = Replay(
        deepseek(
            {"role": "assistant", "content": None, "reasoning_content": "Look it "},
            {"reasoning_content": "up."},
            call(0, '{"city": "Paris"}', id="call_0", name="weather"),
            finish="tool_calls",
        ),
        deepseek({"reasoning_content": "It is sunny."}, {"content": "Sunny."}, finish="stop"),
        deepseek({"reasoning_content": "Plain."}, {"content": "Rainy."}, finish="stop"),
        deepseek({"content": "Bye."}, finish="stop"),
    )
    m = model(replay, wire)
    weather = Tool("weather", "Current weather").string("city")
    history = [rec(RecordType.PROMPT, "Weather in Paris?")]
    first = reply_from_chunks(collect(m, mode, Request(history, tools=[weather])))
    assert first.thinking == "Look it up."
    history += stored(first)
    history.append(rec(RecordType.TOOL_OUTPUT, "sunny", tool_call_id="call_0"))
    second = reply_from_chunks(collect(m, mode, Request(history, tools=[weather])))
    call_message = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "Look it up.",
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert replay.bodies[1]["messages"][1] == call_message
    history += stored(second)
    history.append(rec(RecordType.PROMPT, "And Rome?"))
    third = reply_from_chunks(collect(m, mode, Request(history, tools=[weather])))
    answer = {"role": "assistant", "content": "Sunny.", "reasoning_content": "It is sunny."}
    assert replay.bodies[2]["messages"][1:] == [
        call_message,
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        answer,
        {"role": "user", "content": "And Rome?"},
    ]
    history += stored(third)
    history.append(rec(RecordType.PROMPT, "Thanks."))
    collect(m, mode, Request(history, tools=[weather]))
    assert replay.bodies[3]["messages"][1:] == [
        call_message,
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        answer,
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": "Rainy.", "reasoning_content": "Plain."},
        {"role": "user", "content": "Thanks."},
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_reasoning_from_other_fields_is_not_sent_back(wire: str) -> None:
    """Only reasoning the server sent as ``reasoning_content`` goes back in that field:
    api.openai.com does not know it, and OpenRouter and Groq stream ``reasoning``. A
    record stored before rxcontext noted where its reasoning came from sends none."""
    for mode in MODES:
        replay = Replay(
            deepseek({"reasoning": "Hmm."}, {"content": "A."}, finish="stop"),
            deepseek({"content": "B."}, finish="stop"),
            sse(chunk({}, "stop")),
        )
        m = model(replay, wire)
        history = [rec(RecordType.PROMPT, "a?")]
        first = reply_from_chunks(collect(m, mode, Request(history)))
        assert first.thinking == "Hmm."
        history += [*stored(first), rec(RecordType.PROMPT, "b?")]
        history += [*stored(reply_from_chunks(collect(m, mode, Request(history))))]
        history += [
            rec(RecordType.PROMPT, "c?"),
            rec(RecordType.MODEL_RESP, "C.", metadata={"thinking": "stored long ago"}),
            rec(RecordType.PROMPT, "d?"),
        ]
        collect(m, mode, Request(history))
        assert [msg for msg in replay.bodies[2]["messages"] if msg["role"] == "assistant"] == [
            {"role": "assistant", "content": "A."},
            {"role": "assistant", "content": "B."},
            {"role": "assistant", "content": "C."},
        ]


def test_name_wire_and_lazy_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="wire"):
        OpenAIModel("m", wire="grpc")  # type: ignore[arg-type]
    replay = Replay(sse(chunk({"content": "hi"}), chunk({}, "stop")))
    m = OpenAIModel(
        "gpt-4o-mini",
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    assert m.name == "openai:gpt-4o-mini"
    assert m.wire == "fast"  # the default; wire="sdk" switches back per model
    assert collect(m, "async")[0] == Chunk(ChunkKind.TEXT, "hi")
    # The sync client is only built (and fails for want of a key) when first used.
    with pytest.raises(ProviderError, match="OPENAI_API_KEY") as info:
        list(m.iter_chunks(HELLO))
    assert isinstance(info.value.__cause__, openai.OpenAIError)


@pytest.mark.parametrize("cls", [OpenAIModel, OpenAIResponsesModel])
@pytest.mark.parametrize("given", ["client", "async_client"])
def test_a_missing_client_s_error_names_the_parameter_that_gives_it(
    given: str, cls: type[OpenAIModel | OpenAIResponsesModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model given only ``client=`` (or only ``async_client=``), with no OPENAI_API_KEY,
    used on the other path: the error says to pass the client that path uses, not the one
    the user already passed, and shows no key."""
    import rxcontext
    from rxcontext import ContextWindow, StreamInterrupted

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    replay = Replay(sse(chunk({"content": "hi"}), chunk({}, "stop")))
    if given == "client":
        sdk: Any = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
        wanted, wrong = "async_client=openai.AsyncOpenAI(", "client=openai.OpenAI("
    else:
        sdk = openai.AsyncOpenAI(api_key=KEY, max_retries=0, http_client=replay.async_client())
        wanted, wrong = "client=openai.OpenAI(", "async_client=openai.AsyncOpenAI("
    with rxcontext.open(":memory:") as store:
        cw = ContextWindow(store, cls("gpt-test", **{given: sdk}), "keys", retry=None)
        cw.add_prompt("hi")
        with pytest.raises(StreamInterrupted) as info:
            if given == "client":
                asyncio.run(cw.acall())
            else:
                cw.call()
    error = info.value.__cause__
    assert isinstance(error, ProviderError) and error.error_type == "configuration"
    message = str(error)
    assert "OPENAI_API_KEY" in message and wanted in message
    assert wrong not in message.replace(wanted, ""), message
    assert KEY not in message and replay.requests == []


def test_lazy_client_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    m = OpenAIModel("m")
    client = m._sync()
    assert client.api_key == KEY
    assert m._sync() is client


def test_missing_key_is_a_clear_configuration_error(monkeypatch):
    from rxcontext.errors import ProviderError
    from rxcontext.providers.base import Request

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = OpenAIModel("gpt-x")
    with pytest.raises(ProviderError, match="OPENAI_API_KEY") as info:
        list(model.iter_chunks(Request(records=[])))
    assert info.value.error_type == "configuration"


def test_default_clients_leave_retries_to_rxcontext(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-env-0123456789")
    model = OpenAIModel("gpt-x")
    assert model._client.get().max_retries == 0


def test_an_empty_reply_is_no_assistant_message() -> None:
    """A reply with no text and no call (a reasoning model that spent every token:
    finish_reason "length") is stored empty; Chat requests leave it out, as the other
    providers' do, instead of an assistant message with no content."""
    from datetime import UTC, datetime

    from provider_rules import check_openai_chat

    from rxcontext.providers._openai_chat import ChatHistory, chat_messages
    from rxcontext.records import Record, RecordType

    def rec(i: int, kind: RecordType, text: str) -> Record:
        return Record(i, "c", kind, text, True, 1, datetime.now(UTC), pos=i)

    records = [
        rec(0, RecordType.PROMPT, "Solve this."),
        rec(1, RecordType.MODEL_RESP, ""),
        rec(2, RecordType.PROMPT, "Try again, briefly."),
    ]
    messages = chat_messages(records)
    assert [m["role"] for m in messages] == ["user", "user"]
    check_openai_chat({"messages": messages})
    encoded = [json.loads(part) for part in ChatHistory().encode(records)]
    assert encoded == messages


@pytest.mark.parametrize("path", ["sync", "async"])
def test_openai_base_url_alone_needs_no_key(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "With OPENAI_API_KEY set (or OPENAI_BASE_URL pointing at an OpenAI-compatible
    server)": a local server takes no key, so the client made from the environment is made
    with a placeholder one (as the CLI's is) instead of refusing for want of a key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    model = OpenAIModel("local-model")
    client = model._sync() if path == "sync" else model._async()
    assert str(client.base_url).startswith("http://127.0.0.1:9/v1")
    assert client.api_key  # a placeholder: the SDK sends a bearer header of some key
