"""Differential tests: AnthropicModel's wire="fast" path against wire="sdk".

The same bytes, split into network chunks at random places, go through both paths, sync
and async; the chunk lists (and errors: type, flags, message, cause chain) must be
identical. Streams are the recorded ones and hypothesis-generated ones (random blocks,
fragments, unicode, interleaved tool-call deltas, pings, comments, CRLF, in-stream errors,
cuts, bad frames), and the same streams with one event broken (tests/wire_faults.py):
non-object JSON, a field missing or of the wrong type at any depth, invalid JSON, invalid
UTF-8, a renamed event, every error-event body shape, a body cut anywhere. Every error is a
``ProviderError`` and every chunk is well-typed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from replay import real_files
from wire_faults import EXAMPLES, assert_well_typed, broken, cause_chain, truncated

from rxcontext.chunks import Chunk, ChunkKind
from rxcontext.errors import ProviderError
from rxcontext.providers import AnthropicModel
from rxcontext.providers.base import Request
from rxcontext.records import Record, RecordType

KEY = "sk-ant-test-DIFFERENTIAL-0123456789"
HI = Request([Record(0, "c", RecordType.PROMPT, "hi", True, 0, datetime(2026, 1, 1, tzinfo=UTC))])


class _Body(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, owner: Split, parts: list[bytes], cut: Exception | None) -> None:
        self.owner, self.parts, self.cut = owner, parts, cut

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts
        if self.cut is not None:
            raise self.cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.cut is not None:
            raise self.cut

    def close(self) -> None:
        self.owner.closed += 1

    async def aclose(self) -> None:
        self.owner.closed += 1


class Split:
    """A transport serving one body as the given network chunks (then maybe an error)."""

    def __init__(self, parts: list[bytes], cut: Exception | None = None, status: int = 200) -> None:
        self.parts, self.cut, self.status, self.closed = parts, cut, status, 0
        self.transport = httpx2.MockTransport(self._handle)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            self.status,
            headers={"content-type": "text/event-stream"},
            stream=_Body(self, self.parts, self.cut),
        )


def outcome(chunks: list[Chunk], error: BaseException | None) -> tuple[Any, ...]:
    assert_well_typed(chunks)
    if error is None:
        return (chunks, None)
    assert isinstance(error, ProviderError), repr(error)
    flags = (
        error.retryable,
        error.status_code,
        error.error_type,
        error.retry_after,
        str(error),
        cause_chain(error),
    )
    return (chunks, flags)


def play(parts: list[bytes], wire: str, cut: Exception | None = None) -> list[tuple[Any, ...]]:
    """(sync outcome, async outcome) of one wire path; each closes its response once."""
    sync, asynch = Split(parts, cut), Split(parts, cut)
    m = AnthropicModel(
        "claude-test",
        client=anthropic.Anthropic(
            api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=sync.transport)
        ),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=httpx2.AsyncClient(transport=asynch.transport)
        ),
        wire=wire,  # type: ignore[arg-type]
    )
    out: list[Chunk] = []
    error: BaseException | None = None
    try:
        out.extend(m.iter_chunks(HI))
    except Exception as exc:
        error = exc

    async def go() -> tuple[list[Chunk], BaseException | None]:
        got: list[Chunk] = []
        try:
            async for chunk in m.aiter_chunks(HI):
                got.append(chunk)
        except Exception as exc:
            return got, exc
        return got, None

    results = [outcome(out, error), outcome(*asyncio.run(go()))]
    assert (sync.closed, asynch.closed) == (1, 1)
    return results


def assert_same(parts: list[bytes], cut: Exception | None = None) -> tuple[Any, ...]:
    sdk = play(parts, "sdk", cut)
    fast = play(parts, "fast", cut)
    assert sdk[0] == sdk[1]
    assert fast[0] == sdk[0]
    assert fast[1] == sdk[0]
    return sdk[0]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- recorded streams -----------------------------------------------------------------------

FILES = real_files("anthropic")


@pytest.mark.fixtures
@pytest.mark.skipif(not FILES, reason="../shared/fixtures/real is absent")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_recorded_stream_same_on_both_wires(path: Any) -> None:
    data = path.read_bytes()
    chunks, error = assert_same([data])
    assert error is None and chunks
    # one byte at a time: every frame and every UTF-8 character is split
    assert assert_same([data[i : i + 1] for i in range(len(data))]) == (chunks, None)


@pytest.mark.fixtures
@pytest.mark.skipif(not FILES, reason="../shared/fixtures/real is absent")
def test_recorded_streams_never_fall_back_to_the_sdk_models(monkeypatch: Any) -> None:
    """The fast wire reads well-formed events itself: the SDK's event models are built only
    for an event that is not what it expects."""
    built: list[Any] = []
    for cls in (anthropic.Anthropic, anthropic.AsyncAnthropic):
        process = cls._process_response_data

        def spy(self: Any, *args: Any, process: Any = process, **kwargs: Any) -> Any:
            built.append(kwargs.get("data"))
            return process(self, *args, **kwargs)

        monkeypatch.setattr(cls, "_process_response_data", spy)
    for path in FILES:
        assert play([path.read_bytes()], "fast")[0][1] is None
    assert built == []


@pytest.mark.fixtures
@pytest.mark.skipif(not FILES, reason="../shared/fixtures/real is absent")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=max(len(FILES) - 1, 0)),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=30),
    crlf=st.booleans(),
)
def test_recorded_stream_random_splits(index: int, cuts: list[int], crlf: bool) -> None:
    data = FILES[index].read_bytes()
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    assert_same(split(data, cuts))


# -- generated streams ----------------------------------------------------------------------

pieces = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def json_fragments(draw: st.DrawFn) -> list[str]:
    """A JSON object's text cut into pieces; the first piece is often empty, as in the API."""
    obj = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=5)))
    points = [0, *cuts, len(text)]
    out = [text[a:b] for a, b in itertools.pairwise(points)]
    return ([""] if draw(st.booleans()) else []) + out


@st.composite
def blocks(draw: st.DrawFn, index: int) -> list[dict[str, Any]]:
    """One content block's events: start, deltas, maybe stop."""
    kind = draw(
        st.sampled_from(
            ["text", "thinking", "redacted_thinking", "tool_use", "server_tool_use", "future_block"]
        )
    )
    ev: list[dict[str, Any]] = []

    def delta(d: dict[str, Any]) -> None:
        ev.append({"type": "content_block_delta", "index": index, "delta": d})

    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": draw(st.sampled_from(["", "pre"]))}
        ev.append({"type": "content_block_start", "index": index, "content_block": start})
        for p in draw(st.lists(pieces, max_size=5)):
            delta({"type": "text_delta", "text": p})
        if draw(st.booleans()):
            delta(
                {
                    "type": "citations_delta",
                    "citation": {"type": "char_location", "cited_text": "x"},
                }
            )
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        ev.append({"type": "content_block_start", "index": index, "content_block": start})
        for p in draw(st.lists(pieces, max_size=4)):
            delta({"type": "thinking_delta", "thinking": p})
        for s in draw(st.lists(st.sampled_from(["", "EoQDCm0", "sig+/=="]), max_size=2)):
            delta({"type": "signature_delta", "signature": s})
    elif kind == "redacted_thinking":
        start = {"type": "redacted_thinking", "data": draw(st.text(min_size=1, max_size=8))}
        ev.append({"type": "content_block_start", "index": index, "content_block": start})
    elif kind in ("tool_use", "server_tool_use"):
        start = {
            "type": kind,
            "id": f"toolu_{index}",
            "name": draw(st.sampled_from(["weather", "web_search", "now"])),
            "input": {},
        }
        ev.append({"type": "content_block_start", "index": index, "content_block": start})
        for p in draw(json_fragments()):
            delta({"type": "input_json_delta", "partial_json": p})
    else:
        start = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
        ev.append({"type": "content_block_start", "index": index, "content_block": start})
    if draw(st.integers(0, 4)):  # sometimes no content_block_stop, as at a max_tokens cut
        ev.append({"type": "content_block_stop", "index": index})
    return ev


def usage_counts(draw: st.DrawFn, delta: bool) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        if not delta or draw(st.booleans()):
            counts[key] = draw(st.integers(0, 5000))
    counts["output_tokens"] = draw(st.integers(0, 5000))
    if draw(st.booleans()):
        counts["output_tokens_details"] = {"thinking_tokens": draw(st.integers(0, 100))}
    if draw(st.booleans()):
        counts["server_tool_use"] = {"web_search_requests": draw(st.integers(0, 5))}
    return counts


@st.composite
def message_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The events of a well-formed message stream."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": draw(st.sampled_from(["msg_a", "msg_b"])),
                "type": "message",
                "role": "assistant",
                "model": "claude-test",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage_counts(draw, delta=False),
            },
        }
    ]
    block_events = [draw(blocks(i)) for i in range(draw(st.integers(0, 4)))]
    # Interleave the blocks' delta streams (the index keys each), keeping each in order.
    while any(block_events):
        live = [b for b in block_events if b]
        chosen = live[draw(st.integers(0, len(live) - 1))]
        events.append(chosen.pop(0))
    for _ in range(draw(st.integers(0, 2))):
        events.insert(draw(st.integers(1, len(events))), {"type": "ping"})
    for _ in range(draw(st.integers(0, 2))):
        events.append(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": draw(
                        st.sampled_from(["end_turn", "tool_use", "max_tokens", None])
                    ),
                    "stop_sequence": draw(st.sampled_from([None, "###"])),
                },
                "usage": usage_counts(draw, delta=True),
            }
        )
    events.append({"type": "message_stop"})
    return events


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, Exception | None]:
    """A whole response body (and maybe a transport error after it)."""
    events = draw(message_events())
    ending = draw(st.sampled_from(["ok", "ok", "error", "truncate", "bad_json", "cut"]))
    at = draw(st.integers(1, len(events)))
    event(f"ending: {ending}")
    frames = [(e["type"], json.dumps(e, ensure_ascii=draw(st.booleans()))) for e in events]
    cut: Exception | None = None
    if ending == "error":
        kind = draw(st.sampled_from(["overloaded_error", "api_error", "invalid_request_error"]))
        body = json.dumps({"type": "error", "error": {"type": kind, "message": "Overloaded"}})
        frames[at:] = [("error", draw(st.sampled_from([body, "", "not json"])))]
    elif ending == "truncate":
        frames = frames[:at]
    elif ending == "bad_json":
        frames.insert(at, ("content_block_delta", '{"type": "content_block_delta", '))
    elif ending == "cut":
        frames = frames[:at]
        cut = draw(
            st.sampled_from(
                [
                    httpx2.ReadError("reset"),
                    httpx2.RemoteProtocolError("eof"),
                    httpx2.ReadTimeout("slow"),
                ]
            )
        )
    nl = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    out = []
    for name, data in frames:
        if draw(st.integers(0, 9)) == 0:
            out.append(f": comment{nl}")
        if name == "ping" and draw(st.booleans()):
            out.append(f'event: ping{nl}data: {{"type": "ping"}}{nl}{nl}')
            continue
        out.append(f"event: {name}{nl}data: {data}{nl}{nl}")
    return "".join(out).encode(), cut


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12))
def test_generated_streams_same_on_both_wires(
    stream: tuple[bytes, Exception | None], cuts: list[int]
) -> None:
    body, cut = stream
    assert_same(split(body, cuts), cut)


def test_an_event_ending_a_read_in_cr_cr_is_delivered_before_a_cut() -> None:
    """CR-only line endings: a read that ends with an event's blank line (``\\r\\r``) is
    a whole event to the SDK's decoder, which dispatches it at once; the fast wire waited
    for the next read (a lone ``\\r`` may be half a ``\\r\\n``), and a transport error
    there lost the event's text on that wire alone."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        },
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello"},
    }
    body = frames([(e["type"], json.dumps(e).encode()) for e in (start, block, delta)], b"\r")
    chunks, error = assert_same([body], httpx2.ReadError("reset"))
    assert [c.text for c in chunks if c.text] == ["Hello"] and error is not None


@pytest.mark.parametrize(
    "after",
    [
        httpx2.ReadTimeout("the proxy held the connection open"),
        httpx2.RemoteProtocolError("peer closed the connection"),
        None,
    ],
)
def test_the_reply_ends_at_message_stop_whatever_the_body_does_after(
    after: Exception | None,
) -> None:
    """``message_stop`` is the message's end: a proxy that holds the connection open after
    it (the read then times out), or drops it, or sends more events, must not turn a whole
    reply into an error. Both wires end there, sync and async, and close the body."""
    stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}
    events = [(e["type"], json.dumps(e).encode()) for e in (START, TEXT_START, HEL, stop)]
    body = frames([*events, ("message_stop", b'{"type": "message_stop"}')], b"\n")
    late = frames([("content_block_delta", _j(HEL)), ("error", b'"Overloaded"')], b"\n")
    chunks, error = assert_same([body, late] if after is None else [body], after)
    assert error is None
    assert [c.text for c in chunks if c.text] == ["Hel"]
    assert chunks[-1].kind is ChunkKind.DONE and chunks[-1].finish_reason == "end_turn"


# -- malformed events: both wires end alike, with a ProviderError ------------------------

ERROR_BODIES = [
    '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
    '{"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}',
    '{"type": "error", "error": {"type": "rate_limit_error"}}',
    '{"type": "error", "error": {"type": ["x"], "message": {"a": 1}}}',
    '{"type": "error", "error": "overloaded"}',
    '{"error": {"type": "api_error", "message": "Internal server error"}}',
    '["overloaded_error"]',
    '"Overloaded"',
    "5",
    "null",
    "",
    "upstream connect error",
    '{"type": "error", "error": {"type": "overloaded_error", "message": "Overl',
]


def frames(events: list[tuple[str | None, bytes]], nl: bytes) -> bytes:
    out = []
    for name, data in events:
        head = b"event: " + name.encode() + nl if name is not None else b""
        out.append(head + b"data: " + data + nl + nl)
    return b"".join(out)


@st.composite
def broken_streams(draw: st.DrawFn) -> tuple[bytes, Exception | None]:
    """A message stream with one event broken, renamed, or an error event; or cut anywhere."""
    events: list[tuple[str | None, bytes]] = [
        (e["type"], json.dumps(e).encode()) for e in draw(message_events())
    ]
    how = draw(st.sampled_from(["event"] * 4 + ["error_event"] * 2 + ["renamed", "clean"]))
    at = draw(st.integers(0, len(events) - 1))
    if how == "event":
        _, data = draw(broken(json.loads(events[at][1])))
        if draw(st.booleans()):
            events[at] = (events[at][0], data)
        else:
            events.insert(at, (events[at][0], data))
    elif how == "error_event":
        events.insert(at, ("error", draw(st.sampled_from(ERROR_BODIES)).encode()))
    elif how == "renamed":
        name = draw(st.sampled_from([None, "", "ping", "error", "message_delta", "x"]))
        events[at] = (name, events[at][1])
    event(f"broken: {how}")
    body = frames(events, draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    if draw(st.sampled_from([False] * 4 + [True])):
        body = truncated(draw, body)
    cut: Exception | None = None
    if draw(st.sampled_from([False] * 5 + [True])):
        cut = httpx2.ReadError("reset")
    return body, cut


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=broken_streams(), cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)
)
def test_broken_events_end_both_wires_alike(
    stream: tuple[bytes, Exception | None], cuts: list[int]
) -> None:
    body, cut = stream
    _, error = assert_same(split(body, cuts), cut)
    event(f"error_type: {error[2] if error else None}")


def _errors(body: bytes) -> dict[str, BaseException]:
    """The error of each wire (sync) for ``body``."""
    out = {}
    for wire in ("sdk", "fast"):
        replay = Split([body])
        model = AnthropicModel(
            "claude-test",
            client=anthropic.Anthropic(
                api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=replay.transport)
            ),
            wire=wire,  # type: ignore[arg-type]
        )
        try:
            list(model.iter_chunks(HI))
        except ProviderError as exc:
            out[wire] = exc
    assert set(out) == {"sdk", "fast"}
    return out


START = {
    "type": "message_start",
    "message": {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-test",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    },
}
TEXT_START = {
    "type": "content_block_start",
    "index": 0,
    "content_block": {"type": "text", "text": ""},
}
HEL = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}


def message_body(*middle: tuple[str | None, bytes]) -> bytes:
    head = [(e["type"], json.dumps(e).encode()) for e in (START, TEXT_START, HEL)]
    stop = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 2},
    }
    return frames([*head, *middle, ("message_delta", json.dumps(stop).encode())], b"\n")


@pytest.mark.parametrize("body", ERROR_BODIES)
def test_error_event_has_the_sdk_exception_on_both_wires(body: str) -> None:
    """The SDK raises an ``error`` event as an ``APIStatusError``; so does the fast wire."""
    errors = _errors(message_body(("error", body.encode())))
    for exc in errors.values():
        assert type(exc.__cause__) is anthropic.APIStatusError
        assert exc.status_code is None and exc.__cause__.status_code == 200
    sdk, fast = errors["sdk"], errors["fast"]
    assert cause_chain(sdk) == cause_chain(fast)
    assert (sdk.retryable, sdk.error_type, str(sdk)) == (fast.retryable, fast.error_type, str(fast))
    assert sdk.__cause__.body == fast.__cause__.body  # type: ignore[union-attr]
    assert str(sdk.__cause__) == str(fast.__cause__)


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _text_delta(index: Any = 0, text: Any = "lo", **delta: Any) -> dict[str, Any]:
    body = {"type": "text_delta", "text": text, **delta}
    return {"type": "content_block_delta", "index": index, "delta": body}


@pytest.mark.parametrize(
    ("data", "error_type"),
    [
        pytest.param(b"[]", "invalid_event", id="array"),
        pytest.param(b'"Hel"', "invalid_event", id="string"),
        pytest.param(b"7", "invalid_event", id="number"),
        pytest.param(_j(_text_delta(text=5)), "invalid_event", id="text-number"),
        pytest.param(_j(_text_delta(index="0")), None, id="index-numeric-string-coerced"),
        pytest.param(_j(_text_delta(index=[0])), "invalid_event", id="index-list"),
        pytest.param(
            _j({"type": "content_block_delta", "index": 0, "delta": "lo"}),
            "invalid_event",
            id="delta-str",
        ),
        pytest.param(
            _j(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": 5, "name": "f"},
                }
            ),
            "invalid_event",
            id="tool-id-number",
        ),
        pytest.param(
            _j({"type": "message_delta", "delta": {"stop_reason": 1}, "usage": {}}),
            "invalid_event",
            id="stop-reason-number",
        ),
        pytest.param(
            _j({"type": "message_delta", "delta": {}, "usage": {"output_tokens": "many"}}),
            "invalid_event",
            id="count-string",
        ),
        pytest.param(b'{"type": "content_block_delta", ', "invalid_json", id="cut-json"),
        pytest.param(_j(_text_delta()).replace(b'"lo"', b'"l\xffo"'), "invalid_utf8", id="utf8"),
    ],
)
def test_malformed_event_examples(data: bytes, error_type: str | None) -> None:
    body = message_body(("content_block_delta", data))
    chunks, error = assert_same([body])
    texts = [c.text for c in chunks if c.kind is ChunkKind.TEXT]
    if error_type is None:
        assert error is None and texts == ["Hel", "lo"]
    else:
        assert texts == ["Hel"] and error is not None
        assert error[:3] == (False, None, error_type) and "base_url" in error[4]


def test_invalid_utf8_fails_when_its_event_ends_as_in_the_sdk() -> None:
    """The SDK decodes an event's lines when the event is complete (or the body ends): an
    event cut before its blank line ends the stream with the cut's error, on both wires."""
    head = frames([(e["type"], json.dumps(e).encode()) for e in (START, TEXT_START, HEL)], b"\n")
    bad = b'event: content_block_delta\ndata: {"text": "\xff"}\n'
    chunks, error = assert_same([head, bad], httpx2.ReadError("reset"))
    assert [c.text for c in chunks if c.kind is ChunkKind.TEXT] == ["Hel"]
    assert error is not None and error[2] == "connection_error"
    chunks, error = assert_same([head, bad])
    assert [c.text for c in chunks if c.kind is ChunkKind.TEXT] == ["Hel"]
    assert error is not None and error[2] == "invalid_utf8"
    chunks, error = assert_same([head, bad + b"\n"], httpx2.ReadError("reset"))
    assert error is not None and error[2] == "invalid_utf8"


def test_fast_is_the_default() -> None:
    assert AnthropicModel("claude-test", client=anthropic.Anthropic(api_key=KEY)).wire == "fast"


def _traced(read: Any) -> tuple[list[Any], list[tuple[str, dict[str, Any]]]]:
    """What ``read(client)`` returned, and the spans of a client whose OpenTelemetry spans
    record (the SDK's stream observer is then on the response's body), their attributes
    but the times."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    body = message_body(("content_block_delta", _j(_text_delta(text="lo"))), ("ping", b"{}"))
    client = anthropic.Anthropic(
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.Client(transport=Split([body]).transport),
        open_telemetry={"tracer_provider": provider},
    )
    got = read(client)
    spans = [
        (s.name, {k: v for k, v in (s.attributes or {}).items() if "time" not in k})
        for s in exporter.get_finished_spans()
    ]
    return got, spans


def test_sdk_wire_keeps_the_sdk_stream_observer() -> None:
    """wire="sdk" reads the events past ``Stream.__iter__`` only when that would just pass
    them on (rxcontext.providers.anthropic._events): with the client's spans recording, its
    observer sees every event, and the span ends as when the program iterates the stream."""

    def bare(client: anthropic.Anthropic) -> list[Any]:
        with client.messages.create(
            model="claude-test",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        ) as stream:
            return [event.type for event in stream]

    def ours(client: anthropic.Anthropic) -> list[Any]:
        model = AnthropicModel("claude-test", client=client, max_tokens=10, wire="sdk")
        return [c.text for c in model.iter_chunks(HI) if c.kind is ChunkKind.TEXT]

    events, bare_spans = _traced(bare)
    chunks, our_spans = _traced(ours)
    assert events[-1] == "message_delta" and chunks == ["Hel", "lo"]
    assert len(bare_spans) == 1
    attributes = bare_spans[0][1]
    assert any("usage" in key for key in attributes), attributes  # the observer's work
    assert our_spans == bare_spans


def test_sdk_wire_iterates_a_stream_whose_iter_does_more_as_its_users_do() -> None:
    """The read past ``Stream.__iter__`` is taken only for an ``__iter__`` that uses the
    names of the SDK it was written against: one that does anything more per event (here,
    counts them) is iterated as the SDK's users iterate it."""
    from rxcontext.providers.anthropic import _only_passes_on

    if not (hasattr(anthropic.Stream, "_iterator") and hasattr(anthropic.Stream, "_observer")):
        pytest.skip("this anthropic SDK's Stream has no _iterator/_observer: never bypassed")
    assert _only_passes_on(anthropic.Stream)

    class Counting(anthropic.Stream):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            for item in self._iterator:
                if (observer := self._observer) is not None:
                    observer.item(item)
                self.seen = getattr(self, "seen", 0) + 1
                yield item

    assert not _only_passes_on(Counting)
