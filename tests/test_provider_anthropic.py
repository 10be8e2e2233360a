"""AnthropicModel through the real anthropic SDK on a replayed httpx2 transport.

Recorded streams come from ../shared/fixtures/real/anthropic; crafted streams (built with
``anthropic_sse``) cover what no recording shows: in-stream error events, cache usage,
cuts, HTTP errors. Every stream test runs on both wire paths, sync and async, and
checks that the two give the same chunks.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from replay import REAL, Replay, collect_async, collect_sync, pieces, real_files, real_fixture
from replay import Reply as Canned

import rxcontext
from rxcontext import ContextWindow, StreamInterrupted
from rxcontext.chunks import Chunk, ChunkKind, Reply, ToolCall, Usage
from rxcontext.errors import ProviderError
from rxcontext.providers import AnthropicModel
from rxcontext.providers.anthropic import DEFAULT_MAX_TOKENS, build_messages
from rxcontext.providers.base import Request, reply_from_chunks
from rxcontext.records import Record, RecordType
from rxcontext.tools import Tool

KEY = "sk-ant-test-SECRETKEY-0123456789abcdef"
WIRES = ("sdk", "fast")

# -- helpers ---------------------------------------------------------------------------


def record(
    kind: RecordType,
    content: str = "",
    *,
    tool_call_id: str | None = None,
    tool_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    response_id: str | None = None,
) -> Record:
    return Record(
        id=0,
        context_id="ctx",
        type=kind,
        content=content,
        live=True,
        est_tokens=0,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        response_id=response_id,
        tool_call_id=tool_call_id,
        tool_name=tool_name,
        metadata=metadata or {},
    )


HI = Request([record(RecordType.PROMPT, "hi")])


def model(replay: Replay, wire: str = "sdk", **params: Any) -> AnthropicModel:
    return AnthropicModel(
        "claude-test",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
        **params,
    )


def assert_no_key(exc: BaseException) -> None:
    """The fake key appears in no message or repr of the exception chain."""
    seen: BaseException | None = exc
    while seen is not None:
        assert KEY not in str(seen) and KEY not in repr(seen), repr(seen)
        seen = seen.__cause__ or seen.__context__


def error_flags(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    assert isinstance(exc, ProviderError), repr(exc)
    return (exc.retryable, exc.status_code, exc.error_type, exc.retry_after, type(exc.__cause__))


def run(
    responses: Callable[[], Sequence[Canned | bytes | Path]],
    wire: str = "sdk",
    request: Request = HI,
    **params: Any,
) -> tuple[list[Chunk], BaseException | None, Replay]:
    """Run sync and async on fresh replays of ``responses``; assert they agree."""
    sync_replay, async_replay = Replay(*responses()), Replay(*responses())
    chunks, error = collect_sync(model(sync_replay, wire, **params), request)
    achunks, aerror = collect_async(model(async_replay, wire, **params), request)
    assert achunks == chunks
    assert error_flags(aerror) == error_flags(error)
    assert str(aerror) == str(error)
    assert async_replay.bodies == sync_replay.bodies
    if error is None:
        done = [c for c in chunks if c.kind is ChunkKind.DONE]
        assert len(done) == 1 and chunks[-1] is done[0]
    return chunks, error, sync_replay


def stream(
    responses: Callable[[], Sequence[Canned | bytes | Path]], wire: str = "sdk", **kw: Any
) -> list[Chunk]:
    chunks, error, _ = run(responses, wire, **kw)
    assert error is None, repr(error)
    return chunks


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    """Frame payloads as the API does: ``event: <type>`` then ``data: <json>``."""
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def message_start(id: str = "msg_1", **usage: int) -> dict[str, Any]:
    counts = {"input_tokens": 10, "output_tokens": 1, **usage}
    return {
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": counts,
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **d: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": d}


def text(index: int, t: str) -> dict[str, Any]:
    return delta(index, type="text_delta", text=t)


def args(index: int, piece: str) -> dict[str, Any]:
    return delta(index, type="input_json_delta", partial_json=piece)


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(
    stop: str | None = "end_turn", seq: str | None = None, **usage: Any
) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": seq},
        "usage": {"output_tokens": 5, **usage},
    }


MESSAGE_STOP = {"type": "message_stop"}
PING = {"type": "ping"}


def text_stream(*pieces: str, id: str = "msg_1") -> bytes:
    return anthropic_sse(
        message_start(id),
        block_start(0, {"type": "text", "text": ""}),
        *(text(0, p) for p in pieces),
        block_stop(0),
        message_delta(),
        MESSAGE_STOP,
    )


def json_reply(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Canned:
    return Canned(
        json.dumps(body).encode(),
        status=status,
        headers={"content-type": "application/json", **(headers or {})},
    )


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- every recorded stream -------------------------------------------------------------

FILES = {p.name: p for p in real_files("anthropic")}


def calls(*items: tuple[str, str, dict[str, Any], str]) -> tuple[tuple[Any, ...], ...]:
    return items


EXPECTED: dict[str, dict[str, Any]] = {
    "text_basic_sonnet45.sse": dict(
        text="- Captain\n- Scoop",
        usage=Usage(17, 10, 27),
        finish="end_turn",
        id="msg_017A4s3HAsrqf5d2WvBmrpLr",
    ),
    "stop_sequence_haiku45.sse": dict(
        text='\ndef pelican():\n    return "A large waterbird with a long bill and a throat '
        'pouch for catching fish."\n',
        usage=Usage(16, 28, 44),
        finish="stop_sequence",
        id="msg_01KozUDYHvRtgs3NLgG7jzN9",
        metadata={"anthropic_stop_sequence": "```"},
    ),
    "text_then_two_tool_use_with_args_sonnet46.sse": dict(
        text="I'll check both the current weather and time in New York simultaneously right away!",
        calls=calls(
            (
                "toolu_01Mo5Ee5Yb7vrzaxSNS5DVuP",
                "get_weather",
                {"location": "New York, NY"},
                '{"location": "New York, NY"}',
            ),
            (
                "toolu_01GDAGw1KUdi1DCPPprMKGHR",
                "get_time",
                {"timezone": "America/New_York"},
                '{"timezone": "America/New_York"}',
            ),
        ),
        usage=Usage(721, 113, 834),
        finish="tool_use",
        id="msg_01JqiwuyYfmoZBJx1GLkqxLf",
    ),
    "parallel_tool_use_no_args_roundtrip_haiku45.1.sse": dict(
        calls=calls(
            ("toolu_01LtHJmixrs9NcWQkK8hu8hj", "pelican_name_generator", {}, ""),
            ("toolu_01N8a4jWyf116qKTMqKKmjyt", "pelican_name_generator", {}, ""),
        ),
        usage=Usage(542, 62, 604),
        finish="tool_use",
        id="msg_01V2noLbAb2NgKnjaNw6Cn3w",
    ),
    "parallel_tool_use_no_args_roundtrip_haiku45.2.sse": dict(
        text="Here are two great names for your pet pelican:\n\n1. **Charles** - A sophisticated "
        "and dignified name, perfect for a pelican with personality!\n2. **Sammy** - A friendly "
        "and playful name that gives off warm, approachable vibes.\n\nEither of these would make "
        "an excellent name for your feathered friend! 🦅",
        usage=Usage(678, 82, 760),
        finish="end_turn",
        id="msg_01XMATm4UFnjP841TckVuNF4",
    ),
    "thinking_tool_use_roundtrip_haiku45.1.sse": dict(
        thinking="The user wants me to:\n1. Use the fixed_version tool\n2. Tell them the version\n"
        "3. Make a short joke about it\n\nLet me first call the fixed_version tool to see what "
        "version it returns.",
        calls=calls(("toolu_01825dXWLSoJwCst1qTsiWdb", "fixed_version", {}, "")),
        usage=Usage(598, 92, 690, reasoning_tokens=53),
        finish="tool_use",
        id="msg_01JdU4xqNHXL9QCFWkwCDKGr",
        blocks=[("thinking", "EoQDCm0IDhgCKkCDzGs2")],
    ),
    "thinking_tool_use_roundtrip_haiku45.2.sse": dict(
        text="The version is **0.32a0**.\n\nHere's a joke about it: \n\nLooks like this version is "
        'still in alpha testing... I guess you could say it\'s going through a "0.32a good time" '
        "before becoming stable! 😄\n\n(It's at version 0.32a, which means it's far from 1.0, so "
        "plenty of room to grow!)",
        usage=Usage(707, 89, 796),
        finish="end_turn",
        id="msg_01Qb3MMmP6RUjBckfsEVddrQ",
    ),
    "text_before_thinking_opus46.sse": dict(
        text="\n\n1. **Captain Scoop**\n2. **Gullet**",
        thinking="Brief answer with two pet pelican names.",
        usage=Usage(34, 44, 78),
        finish="end_turn",
        id="msg_016xaB3rMXQHTBuAJvtvxaQx",
        blocks=[("thinking", "EtABCkYICxgCKkCVRmhl")],
    ),
    "redacted_thinking_sonnet45.sse": dict(
        text="I notice that you've sent what appears to be some kind of test string or command. I "
        'don\'t have any special "magic string" triggers or backdoor commands that would expose '
        "internal systems or change my behavior.\n\nI'm Claude, an AI assistant created by "
        "Anthropic to be helpful, harmless, and honest. How can I assist you today with a "
        "legitimate task or question?",
        usage=Usage(92, 189, 281),
        finish="end_turn",
        id="msg_018XZkwvj9asBiffg3fXt88s",
        blocks=[
            ("redacted_thinking", "EqkECkYIBxgCKkA8AZ4n"),
            ("redacted_thinking", "EtgBCkYIBxgCKkDQfGkw"),
        ],
    ),
    "max_tokens_partial_tool_json_sonnet37.sse": dict(
        text="I'll create a comprehensive tax guide for someone with multiple W2s and save it in a "
        "file called taxes.txt. Let me do that for you now.",
        calls=calls(
            (
                "toolu_01EKqbqmZrGRXy18eN7m9kvY",
                "make_file",
                {},
                '{"filename": "taxes.txt", "lines_of_text": [\n"# COMPREHENSIVE TAX GUIDE FOR '
                'INDIVIDUALS WITH MULTIPLE W-2s",\n"",\n"## INTRODUCTION",\n"",\n"Filing taxes',
            )
        ),
        # message_delta gives only output_tokens: the input count of message_start stays.
        usage=Usage(450, 124, 574),
        finish="max_tokens",
        id="msg_01UdjYBBipA9omjYhicnevgq",
    ),
    "web_search_citations_opus41.sse": dict(
        text="Based on the search results, here's the current weather in San Francisco:\n\nToday "
        "(November 15, 2025) in San Francisco is overcast with a slight chance of a rain shower, "
        "with a high of 63°F. Winds are from the west at 10 to 15 mph.\n\nTonight, it will be "
        "cloudy with periods of rain, with a low around 55°F and southwest winds at 10 to 15 mph. "
        "The chance of rain is 80%, with rainfall around a quarter of an inch expected.\n\n"
        "Current conditions show partly cloudy skies with 77% humidity and a dew point of 53°F, "
        "with visibility at 9 miles.\n\nThe weekend forecast indicates continued rain, with a "
        "Level 1 storm system bringing periods of rain this weekend.",
        # message_delta's usage.server_tool_use: one web search, billed per search.
        usage=Usage(10423, 341, 10764, web_search_requests=1),
        finish="end_turn",
        id="msg_01TRpkkgb2QsnyjsGSVdRtGr",
    ),
}


def test_every_recorded_anthropic_stream_has_an_expectation() -> None:
    if not FILES:
        pytest.skip(f"recorded fixtures not found at {REAL}: ../shared/fixtures/real is absent")
    assert sorted(FILES) == sorted(EXPECTED)


@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream(name: str, wire: str) -> None:
    path = real_fixture(f"anthropic/{name}")
    want = EXPECTED[name]
    chunks = stream(lambda: [path], wire)
    reply = reply_from_chunks(chunks)
    assert reply.text == want.get("text", "")
    assert reply.thinking == want.get("thinking", "")
    got_calls = tuple((c.id, c.name, dict(c.arguments), c.raw) for c in reply.tool_calls)
    assert got_calls == want.get("calls", ())
    assert reply.usage == want["usage"]
    assert reply.finish_reason == want["finish"]
    assert reply.response_id == want["id"]
    blocks = reply.metadata.get("thinking_blocks", [])
    got_blocks = [(b["type"], (b.get("signature") or b.get("data"))[:20]) for b in blocks]
    assert got_blocks == want.get("blocks", [])
    other = {k: v for k, v in reply.metadata.items() if k != "thinking_blocks"}
    assert other == want.get("metadata", {})
    # No chunk is empty: "" deltas are skipped (a tool call's first fragment carries id/name).
    for c in chunks:
        if c.kind in (ChunkKind.TEXT, ChunkKind.THINKING):
            assert c.text or c.metadata
        if c.kind is ChunkKind.TOOL_CALL:
            assert c.text or c.id


@pytest.mark.fixtures
def test_thinking_then_tool_use_chunks_exactly(wire: str) -> None:
    path = real_fixture("anthropic/thinking_tool_use_roundtrip_haiku45.1.sse")
    chunks = stream(lambda: [path], wire)
    line = next(ln for ln in path.read_text().splitlines() if "signature_delta" in ln)
    sig = json.loads(line.removeprefix("data: "))["delta"]["signature"]
    start = Usage(598, 8, 606)
    end = Usage(598, 92, 690, reasoning_tokens=53)
    T = ChunkKind.THINKING
    assert chunks == [
        Chunk(ChunkKind.USAGE, usage=start),
        Chunk(T, "The user wants me to:\n1", 0),
        Chunk(
            T,
            ". Use the fixed_version tool\n2. Tell them the version\n3. Make a short joke about "
            "it\n\nLet me first call the fixed_version tool to see what version it returns.",
            0,
        ),
        # the empty thinking_delta gives no chunk; the signature goes at the block's index
        Chunk(T, "", 0, metadata={"signature": sig}),
        Chunk(
            ChunkKind.TOOL_CALL, "", 1, id="toolu_01825dXWLSoJwCst1qTsiWdb", name="fixed_version"
        ),
        # the empty input_json_delta gives no chunk
        Chunk(ChunkKind.USAGE, usage=end),
        Chunk(
            ChunkKind.DONE,
            finish_reason="tool_use",
            response_id="msg_01JdU4xqNHXL9QCFWkwCDKGr",
            usage=end,
        ),
    ]
    reply = reply_from_chunks(chunks)
    assert reply.tool_calls == (
        ToolCall("toolu_01825dXWLSoJwCst1qTsiWdb", "fixed_version", {}, "", 1),
    )
    assert reply.metadata["thinking_blocks"] == [
        {"type": "thinking", "thinking": reply.thinking, "signature": sig}
    ]


@pytest.mark.fixtures
def test_redacted_thinking_chunks(wire: str) -> None:
    path = real_fixture("anthropic/redacted_thinking_sonnet45.sse")
    chunks = stream(lambda: [path], wire)
    redacted = [c for c in chunks if c.kind is ChunkKind.THINKING]
    assert [(c.index, c.text, sorted(c.metadata)) for c in redacted] == [
        (0, "", ["redacted"]),
        (1, "", ["redacted"]),
    ]
    assert redacted[0].metadata["redacted"].startswith("EqkECkYIBxgCKkA8AZ4n")
    assert redacted[1].metadata["redacted"].endswith("dZ1J0GAE=")
    # the text block after them is at index 2
    assert {c.index for c in chunks if c.kind is ChunkKind.TEXT} == {2}


@pytest.mark.fixtures
def test_server_tools_make_no_tool_calls(wire: str) -> None:
    """server_tool_use / web_search_tool_result run at Anthropic: the window must not run
    them, so they give no TOOL_CALL chunk; citations_delta events are dropped."""
    path = real_fixture("anthropic/web_search_citations_opus41.sse")
    chunks = stream(lambda: [path], wire)
    assert not [c for c in chunks if c.kind is ChunkKind.TOOL_CALL]
    assert not [c for c in chunks if c.kind is ChunkKind.THINKING]
    assert reply_from_chunks(chunks).metadata == {}


@pytest.mark.fixtures
def test_max_tokens_inside_a_tool_use_block(wire: str) -> None:
    """No content_block_stop for the cut block: still a complete reply, the call says why
    its arguments are unusable."""
    path = real_fixture("anthropic/max_tokens_partial_tool_json_sonnet37.sse")
    reply = reply_from_chunks(stream(lambda: [path], wire))
    assert reply.finish_reason == "max_tokens"
    (call,) = reply.tool_calls
    assert call.arguments == {}
    assert call.error is not None and "invalid JSON" in call.error


# -- crafted streams -------------------------------------------------------------------


def test_usage_is_cumulative_replace_never_add(wire: str) -> None:
    body = anthropic_sse(
        message_start(
            input_tokens=100,
            output_tokens=1,
            cache_read_input_tokens=40,
            cache_creation_input_tokens=7,
        ),
        PING,
        block_start(0, {"type": "text", "text": ""}),
        text(0, "a"),
        block_stop(0),
        message_delta(None, output_tokens=20),
        message_delta(
            "end_turn",
            output_tokens=30,
            input_tokens=101,
            output_tokens_details={"thinking_tokens": 12},
        ),
        MESSAGE_STOP,
    )
    chunks = stream(lambda: [body], wire)
    usages = [c.usage for c in chunks if c.kind is ChunkKind.USAGE]
    # input = uncached + cache writes + cache reads; cache reads and writes kept apart
    assert usages == [
        Usage(147, 1, 148, cached_tokens=40, cache_write_tokens=7),
        Usage(147, 20, 167, cached_tokens=40, cache_write_tokens=7),
        Usage(148, 30, 178, cached_tokens=40, reasoning_tokens=12, cache_write_tokens=7),
    ]
    assert chunks[-1] == Chunk(
        ChunkKind.DONE, finish_reason="end_turn", response_id="msg_1", usage=usages[-1]
    )


def test_web_searches_are_counted_from_usage_server_tool_use(wire: str) -> None:
    """Anthropic bills each web search ($10 per 1,000) on top of tokens and reports the
    count in usage.server_tool_use (cumulative, like the token counts): the reply's usage
    carries it, replaced never added; web fetches are free and not counted."""
    body = anthropic_sse(
        message_start(
            input_tokens=2039,
            server_tool_use={"web_search_requests": 0, "web_fetch_requests": 0},
        ),
        block_start(
            0, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
        ),
        args(0, '{"query": "weather '),
        args(0, 'in Lisbon"}'),
        block_stop(0),
        block_start(
            1,
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_1",
                "content": [
                    {
                        "type": "web_search_result",
                        "title": "Lisbon weather",
                        "url": "https://example.com/lisbon",
                        "encrypted_content": "EqQBCioIAxgCIiQ",
                        "page_age": None,
                    }
                ],
            },
        ),
        block_stop(1),
        block_start(
            2, {"type": "server_tool_use", "id": "srvtoolu_2", "name": "web_search", "input": {}}
        ),
        args(2, '{"query": "Lisbon forecast"}'),
        block_stop(2),
        block_start(
            3, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_2", "content": []}
        ),
        block_stop(3),
        block_start(4, {"type": "text", "text": ""}),
        text(4, "Sunny."),
        block_stop(4),
        message_delta(
            None,
            output_tokens=20,
            server_tool_use={"web_search_requests": 2, "web_fetch_requests": 1},
        ),
        # a later delta that leaves server_tool_use out keeps the count
        message_delta("end_turn", output_tokens=30, input_tokens=10423),
        MESSAGE_STOP,
    )
    chunks = stream(lambda: [body], wire)
    usages = [c.usage for c in chunks if c.kind is ChunkKind.USAGE]
    assert usages == [
        Usage(2039, 1, 2040),
        Usage(2039, 20, 2059, web_search_requests=2),
        Usage(10423, 30, 10453, web_search_requests=2),
    ]
    reply = reply_from_chunks(chunks)
    assert reply.text == "Sunny." and reply.tool_calls == ()
    assert reply.usage == usages[-1]


def test_text_thinking_and_tool_use_interleaved_blocks(wire: str) -> None:
    body = anthropic_sse(
        message_start("msg_mix"),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, type="thinking_delta", thinking="hmm"),
        delta(0, type="thinking_delta", thinking=""),
        delta(0, type="signature_delta", signature="SIG-A"),
        block_stop(0),
        block_start(1, {"type": "redacted_thinking", "data": "REDACTED-B"}),
        block_stop(1),
        block_start(2, {"type": "text", "text": ""}),
        text(2, ""),
        text(2, "Let me look."),
        block_stop(2),
        block_start(3, {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}),
        args(3, ""),
        args(3, '{"city": '),
        args(3, '"Paris"}'),
        block_stop(3),
        block_start(4, {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}),
        block_stop(4),
        {"type": "some_future_event", "x": 1},
        message_delta("tool_use"),
        MESSAGE_STOP,
    )
    chunks = stream(lambda: [body], wire)
    kinds = [(c.kind.value, c.index, c.text, c.id, dict(c.metadata)) for c in chunks[1:-2]]
    assert kinds == [
        ("thinking", 0, "hmm", None, {}),
        ("thinking", 0, "", None, {"signature": "SIG-A"}),
        ("thinking", 1, "", None, {"redacted": "REDACTED-B"}),
        ("text", 2, "Let me look.", None, {}),
        ("tool_call", 3, "", "toolu_a", {}),
        ("tool_call", 3, '{"city": ', None, {}),
        ("tool_call", 3, '"Paris"}', None, {}),
        ("tool_call", 4, "", "toolu_b", {}),
    ]
    reply = reply_from_chunks(chunks)
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("toolu_a", "weather", {"city": "Paris"}),
        ("toolu_b", "now", {}),
    ]
    assert reply.metadata["thinking_blocks"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "SIG-A"},
        {"type": "redacted_thinking", "data": "REDACTED-B"},
    ]


def test_pings_unnamed_and_empty_events_are_skipped(wire: str) -> None:
    # The SDK skips events without an `event:` line and events with empty data.
    body = (
        b": keep-alive comment\n\n"
        + anthropic_sse(message_start())
        + b'event: ping\ndata: {"type": "ping"}\n\n'
        + b"data: "
        + json.dumps(text(0, "X")).encode()
        + b"\n\n"
        + b"event: content_block_delta\n\n"
        + text_stream("ok")[text_stream("ok").index(b"event: content_block_start") :]
    )
    chunks = stream(lambda: [body], wire)
    assert reply_from_chunks(chunks).text == "ok"


def test_crlf_framing(wire: str) -> None:
    body = text_stream("a", "b").replace(b"\n", b"\r\n")
    assert reply_from_chunks(stream(lambda: [body], wire)).text == "ab"


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        ("overloaded_error", True),
        ("api_error", True),
        ("rate_limit_error", True),
        ("invalid_request_error", False),
    ],
)
def test_in_stream_error_event(wire: str, kind: str, retryable: bool) -> None:
    """An error event on HTTP 200: the SDK raises a plain APIStatusError; the body's type
    decides."""
    body = (
        anthropic_sse(message_start(), block_start(0, {"type": "text", "text": ""}), text(0, "Hel"))
        + f"event: error\ndata: {json.dumps(error_body(kind, 'Overloaded'))}\n\n".encode()
        + anthropic_sse(text(0, "never"))
    )
    chunks, error, _ = run(lambda: [body], wire)
    assert reply_from_chunks(chunks).text == "Hel"
    assert isinstance(error, ProviderError)
    assert error.retryable is retryable
    assert error.error_type == kind
    assert error.status_code is None
    assert error.provider == "anthropic"
    assert "Overloaded" in str(error) and kind in str(error)
    if wire == "sdk":
        assert type(error.__cause__) is anthropic.APIStatusError


def test_in_stream_error_event_without_json(wire: str) -> None:
    body = anthropic_sse(message_start()) + b"event: error\ndata: upstream gone\n\n"
    _, error, _ = run(lambda: [body], wire)
    assert isinstance(error, ProviderError)
    assert not error.retryable and error.error_type is None
    assert "upstream gone" in str(error)


def test_stream_that_ends_without_stop_reason_is_an_error(wire: str) -> None:
    body = anthropic_sse(
        message_start(), block_start(0, {"type": "text", "text": ""}), text(0, "par")
    )
    chunks, error, _ = run(lambda: [body], wire)
    assert reply_from_chunks(chunks).text == "par"
    assert isinstance(error, ProviderError)
    assert error.retryable and error.error_type == "incomplete_stream"


def test_invalid_json_frame(wire: str) -> None:
    body = anthropic_sse(message_start()) + b"event: content_block_delta\ndata: {not json\n\n"
    _, error, _ = run(lambda: [body], wire)
    assert isinstance(error, ProviderError)
    assert error.error_type == "invalid_json" and not error.retryable
    assert isinstance(error.__cause__, json.JSONDecodeError)


# -- transport and HTTP errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error_type"),
    [
        (httpx2.ReadError("connection reset by peer"), "connection_error"),
        (httpx2.DecodingError("corrupt gzip body"), "connection_error"),
        (httpx2.RemoteProtocolError("peer closed connection"), "connection_error"),
        (httpx2.ReadTimeout("read timed out"), "timeout"),
    ],
)
def test_transport_error_mid_stream(wire: str, exc: Exception, error_type: str) -> None:
    body = text_stream("one", "two", "three")
    chunks, error, replay = run(lambda: [Canned(body, cut_after=4, error=exc)], wire)
    assert reply_from_chunks(chunks).text == "onetwo"
    assert isinstance(error, ProviderError)
    assert error.retryable and error.error_type == error_type
    assert error.__cause__ is exc
    assert replay.closed == 1


def test_transport_error_mid_stream_keeps_its_own_cause(wire: str) -> None:
    # httpx2 raises its errors from the socket's (an OSError): the chain reaches the
    # subscriber whole on both wires, whether or not the SDK wraps the read (anthropic 2.17).
    exc = httpx2.ReadError("connection reset by peer")
    exc.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    chunks, error, _ = run(
        lambda: [Canned(text_stream("one", "two"), cut_after=4, error=exc)], wire
    )
    assert reply_from_chunks(chunks).text == "onetwo"
    assert isinstance(error, ProviderError) and error.error_type == "connection_error"
    assert error.__cause__ is exc
    assert isinstance(exc.__cause__, ConnectionResetError)


class Refuse(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """A transport that cannot connect."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        raise self.exc

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "error_type", "cause"),
    [
        (
            httpx2.ConnectError("name or service not known"),
            "connection_error",
            anthropic.APIConnectionError,
        ),
        (httpx2.ConnectTimeout("connect timed out"), "timeout", anthropic.APITimeoutError),
    ],
)
def test_transport_error_at_connect(
    wire: str, exc: Exception, error_type: str, cause: type
) -> None:
    transport = Refuse(exc)
    m = AnthropicModel(
        "claude-test",
        client=anthropic.Anthropic(
            api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=transport)
        ),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
        ),
        wire=wire,  # type: ignore[arg-type]
    )
    for chunks, error in (collect_sync(m, HI), collect_async(m, HI)):
        assert chunks == []
        assert isinstance(error, ProviderError)
        assert error.retryable and error.error_type == error_type
        assert isinstance(error.__cause__, cause)
        assert_no_key(error)


@pytest.mark.parametrize(
    ("status", "kind", "headers", "retryable", "retry_after"),
    [
        (400, "invalid_request_error", {}, False, None),
        (401, "authentication_error", {}, False, None),
        (403, "permission_error", {}, False, None),
        (404, "not_found_error", {}, False, None),
        (429, "rate_limit_error", {"retry-after": "7"}, True, 7.0),
        (500, "api_error", {}, True, None),
        (529, "overloaded_error", {"retry-after-ms": "1500"}, True, 1.5),
    ],
)
def test_http_error_status(
    wire: str,
    status: int,
    kind: str,
    headers: dict[str, str],
    retryable: bool,
    retry_after: float | None,
) -> None:
    reply = json_reply(error_body(kind, "request failed"), status, headers)
    chunks, error, _ = run(lambda: [reply], wire)
    assert chunks == []
    assert isinstance(error, ProviderError)
    assert (error.status_code, error.error_type, error.retryable, error.retry_after) == (
        status,
        kind,
        retryable,
        retry_after,
    )
    assert isinstance(error.__cause__, anthropic.APIStatusError)
    assert_no_key(error)
    if status == 401:
        assert "ANTHROPIC_API_KEY" in str(error)


def test_a_key_echoed_by_the_server_is_masked(wire: str) -> None:
    reply = json_reply(error_body("authentication_error", f"invalid x-api-key {KEY}"), 401)
    _, error, _ = run(lambda: [reply], wire)
    assert isinstance(error, ProviderError)
    assert KEY not in str(error) and KEY not in repr(error)
    assert "invalid x-api-key ***" in str(error)


def test_http_error_in_complete() -> None:
    for do in ("sync", "async"):
        m = model(Replay(json_reply(error_body("overloaded_error", "Overloaded"), 529)))
        with pytest.raises(ProviderError) as info:
            if do == "sync":
                m.complete(HI)
            else:
                asyncio.run(m.acomplete(HI))
        assert info.value.retryable and info.value.status_code == 529
        assert info.value.error_type == "overloaded_error"


# -- cancellation ------------------------------------------------------------------------


def test_closing_the_generator_closes_the_response(wire: str) -> None:
    replay = Replay(text_stream("a", "b", "c", "d"))
    gen = model(replay, wire).iter_chunks(HI)
    assert next(gen).kind is ChunkKind.USAGE
    assert next(gen).text == "a"
    gen.close()  # type: ignore[attr-defined]
    assert replay.closed == 1


def test_dropping_the_generator_closes_the_response(wire: str) -> None:
    replay = Replay(text_stream("a", "b", "c", "d"))
    gen = model(replay, wire).iter_chunks(HI)
    next(gen)
    del gen
    gc.collect()
    assert replay.closed == 1


def test_aclose_closes_the_response(wire: str) -> None:
    replay = Replay(text_stream("a", "b", "c", "d"))

    async def go() -> None:
        agen = model(replay, wire).aiter_chunks(HI)
        assert (await agen.__anext__()).kind is ChunkKind.USAGE
        assert (await agen.__anext__()).text == "a"
        await agen.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())
    assert replay.closed == 1


# -- requests ------------------------------------------------------------------------------


def test_request_body_defaults_params_and_overrides() -> None:
    weather = Tool("weather", "Current weather").string("city", "City name")
    records = [
        record(RecordType.SYSTEM_PROMPT, "Be brief."),
        record(RecordType.PROMPT, "Weather in Paris?"),
    ]
    replay = Replay(text_stream("x"), text_stream("y"), text_stream("z"))
    m = model(replay, temperature=0.5, cache=False)
    reply_from_chunks(m.iter_chunks(Request(records, tools=[weather])))
    first = replay.bodies[0]
    assert first == {
        "model": "claude-test",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 0.5,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        "tools": [weather.to_anthropic()],
        "stream": True,
    }
    m = model(replay, max_tokens=1000, temperature=0.5)
    reply_from_chunks(m.iter_chunks(Request(records, max_output_tokens=77)))
    assert replay.bodies[1]["max_tokens"] == 77
    reply_from_chunks(m.iter_chunks(Request(records, options={"temperature": 0.0, "top_k": 3})))
    assert replay.bodies[2]["max_tokens"] == 1000
    assert (replay.bodies[2]["temperature"], replay.bodies[2]["top_k"]) == (0.0, 3)
    assert "tools" not in replay.bodies[2]


def test_build_messages_merges_roles_and_groups_tool_calls() -> None:
    R = RecordType
    system, messages = build_messages(
        [
            record(R.SYSTEM_PROMPT, "one"),
            record(R.SYSTEM_PROMPT, "two"),
            record(R.PROMPT, "first"),
            record(R.PROMPT, "second"),
            record(
                R.MODEL_RESP,
                "",
                metadata={
                    "thinking_blocks": [
                        {"type": "thinking", "thinking": "t", "signature": "s"},
                        {"type": "redacted_thinking", "data": "d"},
                        {"type": "something_else", "x": 1},
                    ],
                    "other_provider_key": "ignored",
                },
            ),
            record(R.TOOL_CALL, '{"a": 1}', tool_call_id="c1", tool_name="f"),
            record(R.TOOL_CALL, "", tool_call_id="c2", tool_name="g"),
            record(R.TOOL_CALL, '{"cut', tool_call_id="c3", tool_name="h"),
            record(R.TOOL_OUTPUT, "r1", tool_call_id="c1", tool_name="f"),
            record(R.TOOL_OUTPUT, "r2", tool_call_id="c2", tool_name="g"),
            record(R.TOOL_OUTPUT, "r3", tool_call_id="c3", tool_name="h"),
            record(R.MODEL_RESP, "done"),
            record(R.MODEL_RESP, ""),  # an empty reply sends no empty turn
            record(R.PROMPT, "thanks"),
        ]
    )
    assert system == "one\n\ntwo"
    assert messages == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "redacted_thinking", "data": "d"},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "c2", "name": "g", "input": {}},
                {"type": "tool_use", "id": "c3", "name": "h", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "r2"},
                {"type": "tool_result", "tool_use_id": "c3", "content": "r3"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]


def window_records(prompt: str, reply: Reply, outputs: dict[str, str]) -> list[Record]:
    """The records a window stores for a prompt, a reply with tool calls, and their outputs."""
    out = [
        record(RecordType.PROMPT, prompt),
        record(
            RecordType.MODEL_RESP,
            reply.text,
            metadata=dict(reply.metadata),
            response_id=reply.response_id,
        ),
    ]
    for call in reply.tool_calls:
        out.append(
            record(
                RecordType.TOOL_CALL,
                call.raw,
                tool_call_id=call.id,
                tool_name=call.name,
                metadata=dict(call.metadata),
            )
        )
    for call in reply.tool_calls:
        out.append(
            record(
                RecordType.TOOL_OUTPUT, outputs[call.id], tool_call_id=call.id, tool_name=call.name
            )
        )
    return out


def second_turn(
    name: str, wire: str, outputs: list[str], **params: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Play round 1, store it as the window would, send round 2; (sent, recorded) bodies."""
    first = real_fixture(f"anthropic/{name}.1.sse")
    second = real_fixture(f"anthropic/{name}.2.sse")
    recorded = json.loads(real_fixture(f"anthropic/{name}.2.request.json").read_text())
    prompt = recorded["messages"][0]["content"][0]["text"]
    tools = [
        Tool.from_json_schema(t["name"], t["description"], t["input_schema"])
        for t in recorded["tools"]
    ]
    replay = Replay(first, second)
    m = model(replay, wire, **params)
    reply = reply_from_chunks(
        m.iter_chunks(Request([record(RecordType.PROMPT, prompt)], tools=tools))
    )
    records = window_records(
        prompt, reply, dict(zip([c.id for c in reply.tool_calls], outputs, strict=True))
    )
    reply2 = reply_from_chunks(m.iter_chunks(Request(records, tools=tools)))
    assert reply2.finish_reason == "end_turn"
    sent = replay.bodies[1]
    # Tool schemas: the same name/description/properties (ours also say "required": []).
    assert [
        (t["name"], t["description"], t["input_schema"]["properties"]) for t in sent["tools"]
    ] == [(t["name"], t["description"], t["input_schema"]["properties"]) for t in recorded["tools"]]
    return sent, recorded


@pytest.mark.fixtures
def test_second_turn_sends_thinking_with_signature_and_tool_result(wire: str) -> None:
    params = {
        "max_tokens": 64000,
        "temperature": 1.0,
        "thinking": {"type": "enabled", "budget_tokens": 1024, "display": "summarized"},
    }
    # The recording's client sent no cache breakpoints: compare with caching off.
    sent, recorded = second_turn(
        "thinking_tool_use_roundtrip_haiku45", wire, ["0.32a0"], cache=False, **params
    )
    assert sent["messages"] == recorded["messages"]
    assert {k: v for k, v in sent.items() if k not in ("tools", "model")} == {
        k: v for k, v in recorded.items() if k not in ("tools", "model")
    }


@pytest.mark.fixtures
def test_second_turn_sends_parallel_no_arg_tool_uses_and_results(wire: str) -> None:
    sent, recorded = second_turn(
        "parallel_tool_use_no_args_roundtrip_haiku45",
        wire,
        ["Charles", "Sammy"],
        cache=False,
        max_tokens=8192,
        temperature=1.0,
    )
    # The recording's client (llm-anthropic) padded the empty assistant text to " "; an
    # empty reply text is simply left out here. Apart from that block, identical.
    for message in recorded["messages"]:
        message["content"] = [
            b for b in message["content"] if not (b["type"] == "text" and not b["text"].strip())
        ]
    assert sent["messages"] == recorded["messages"]


# -- whitespace-only text ------------------------------------------------------------------
# Anthropic refuses a text block of whitespace only ("messages: text content blocks must
# contain non-whitespace text"), and claude-opus-4-6 opens adaptive-thinking replies with
# one ("\n\n", anthropic/text_before_thinking_opus46.sse).

OPUS46 = "anthropic/text_before_thinking_opus46.sse"


def test_a_whitespace_only_reply_text_is_not_sent_back(wire: str) -> None:
    R = RecordType
    thinking = {"type": "thinking", "thinking": "Call it.", "signature": "SIG1"}
    records = [
        record(R.PROMPT, "hi"),
        record(R.MODEL_RESP, "\n\n"),  # a cut reply kept as it was
        record(R.PROMPT, "again"),
        record(R.MODEL_RESP, " \n\t", metadata={"thinking_blocks": [thinking]}),
        record(R.TOOL_CALL, '{"i": 1}', tool_call_id="toolu_1", tool_name="t"),
        record(R.TOOL_OUTPUT, "42", tool_call_id="toolu_1", tool_name="t"),
        record(R.MODEL_RESP, "\n\nDone."),  # leading whitespace in a text with words stays
        record(R.PROMPT, "next"),
    ]
    want = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}],
        },
        {
            "role": "assistant",
            "content": [
                thinking,
                {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"i": 1}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "\n\nDone."}]},
        {"role": "user", "content": [{"type": "text", "text": "next"}]},
    ]
    assert build_messages(records)[1] == want
    _, error, replay = run(lambda: [text_stream("ok")], wire, Request(records), cache=False)
    assert error is None
    assert replay.bodies[0]["messages"] == want


def _cut_after_whitespace() -> Canned:
    """The recorded opus-4-6 stream, cut right after its "\\n\\n" text block."""
    body = real_fixture(OPUS46).read_bytes()
    parts = pieces(body)
    stop = next(i for i, p in enumerate(parts) if b'"content_block_stop","index":0' in p)
    return Canned(body, cut_after=stop + 1)


def _window(replay: Replay, wire: str) -> ContextWindow:
    return ContextWindow(rxcontext.open(":memory:"), model(replay, wire), "ws", retry=None)


def _cut(cw: ContextWindow, mode: str) -> int:
    """Add a prompt and stream a reply that is cut; the checkpoint's id."""
    cw.add_prompt("Two names for a pet pelican, be brief")

    async def acut() -> None:
        async for _ in cw.astream():
            pass

    with pytest.raises(StreamInterrupted) as cut:
        if mode == "sync":
            cw.call()
        else:
            asyncio.run(acut())
    assert cut.value.checkpoint.text == "\n\n"
    return cut.value.checkpoint.id


@pytest.mark.fixtures
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_reply_cut_after_whitespace_resumes_as_the_original_request(wire: str, mode: str) -> None:
    """Nothing but whitespace was delivered: the resume sends the request the reply
    answers, as when nothing was delivered (not a whitespace assistant turn)."""
    replay = Replay(_cut_after_whitespace(), real_fixture("anthropic/text_basic_sonnet45.sse"))
    cw = _window(replay, wire)
    checkpoint = _cut(cw, mode)

    async def aresume() -> None:
        async for _ in cw.aresume(checkpoint):
            pass

    if mode == "sync":
        cw.resume_call(checkpoint)
    else:
        asyncio.run(aresume())
    assert replay.bodies[1]["messages"] == replay.bodies[0]["messages"]
    (reply,) = [r for r in cw.live_records() if r.type is RecordType.MODEL_RESP]
    assert reply.content.startswith("\n\n") and reply.content.strip()


@pytest.mark.fixtures
def test_a_kept_whitespace_reply_is_left_out_of_later_requests(wire: str) -> None:
    replay = Replay(_cut_after_whitespace(), real_fixture("anthropic/text_basic_sonnet45.sse"))
    cw = _window(replay, wire)
    assert cw.keep(_cut(cw, "sync")).content == "\n\n"
    cw.add_prompt("next?")
    cw.call()
    assert replay.bodies[1]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Two names for a pet pelican, be brief"},
                {"type": "text", "text": "next?", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ]


# -- non-streaming -------------------------------------------------------------------------

MESSAGE = {
    "id": "msg_full",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "SIG1"},
        {"type": "redacted_thinking", "data": "OPAQUE"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "output_tokens": 40,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 9},
    },
}

SAME_MESSAGE_STREAMED = anthropic_sse(
    message_start(
        "msg_full",
        input_tokens=50,
        output_tokens=1,
        cache_read_input_tokens=20,
        cache_creation_input_tokens=0,
    ),
    block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    delta(0, type="thinking_delta", thinking="Let me "),
    delta(0, type="thinking_delta", thinking="think."),
    delta(0, type="signature_delta", signature="SIG1"),
    block_stop(0),
    block_start(1, {"type": "redacted_thinking", "data": "OPAQUE"}),
    block_stop(1),
    block_start(2, {"type": "text", "text": ""}),
    text(2, "Check"),
    text(2, "ing."),
    block_stop(2),
    block_start(3, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
    args(3, ""),
    args(3, '{"city": "Pa'),
    args(3, 'ris"}'),
    block_stop(3),
    block_start(4, {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}),
    args(4, ""),
    block_stop(4),
    message_delta("tool_use", output_tokens=40, output_tokens_details={"thinking_tokens": 9}),
    MESSAGE_STOP,
)


def test_complete_equals_the_streamed_reply(wire: str) -> None:
    streamed = reply_from_chunks(stream(lambda: [SAME_MESSAGE_STREAMED], wire))
    replay = Replay(json_reply(MESSAGE), json_reply(MESSAGE))
    m = model(replay, wire)
    complete = m.complete(HI)
    acomplete = asyncio.run(m.acomplete(HI))
    assert complete == streamed == acomplete
    assert complete.usage == Usage(70, 40, 110, cached_tokens=20, reasoning_tokens=9)
    assert [c.arguments for c in complete.tool_calls] == [{"city": "Paris"}, {}]
    assert "stream" not in replay.bodies[0]


def test_complete_with_a_stop_sequence() -> None:
    body = dict(
        MESSAGE,
        content=[{"type": "text", "text": "x"}],
        stop_reason="stop_sequence",
        stop_sequence="###",
    )
    reply = model(Replay(json_reply(body))).complete(HI)
    assert (reply.text, reply.finish_reason, reply.metadata) == (
        "x",
        "stop_sequence",
        {"anthropic_stop_sequence": "###"},
    )


# -- construction ----------------------------------------------------------------------------


def test_clients_are_built_lazily_per_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    replay = Replay(text_stream("hello"))
    m = AnthropicModel(
        "claude-test-4",
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    assert m.name == "anthropic:claude-test-4"
    chunks, error = collect_async(m, HI)
    assert error is None and reply_from_chunks(chunks).text == "hello"


def test_client_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    m = AnthropicModel("claude-test-4")
    assert m._client.get().api_key == KEY


def test_unknown_wire_is_rejected() -> None:
    with pytest.raises(ValueError, match="wire"):
        AnthropicModel("m", wire="grpc")  # type: ignore[arg-type]
