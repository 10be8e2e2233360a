"""Differential tests: AnthropicModel's wire="fast" path against wire="sdk".

The same bytes, split into network chunks at random places, go through both paths, sync
and async; the chunk lists (and errors: type, flags, message) must be identical. Streams
are the recorded ones and hypothesis-generated ones (random blocks, fragments, unicode,
interleaved tool-call deltas, pings, comments, CRLF, in-stream errors, cuts, bad frames).
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

from rxcontext.chunks import Chunk
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
    if error is None:
        return (chunks, None)
    assert isinstance(error, ProviderError), repr(error)
    flags = (error.retryable, error.status_code, error.error_type, error.retry_after, str(error))
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
    return counts


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, Exception | None]:
    """A whole response body (and maybe a transport error after it)."""
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
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    out = []
    for name, data in frames:
        if draw(st.integers(0, 9)) == 0:
            out.append(f": comment{nl}")
        if name == "ping" and draw(st.booleans()):
            out.append(f'event: ping{nl}data: {{"type": "ping"}}{nl}{nl}')
            continue
        out.append(f"event: {name}{nl}data: {data}{nl}{nl}")
    return "".join(out).encode(), cut


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12))
def test_generated_streams_same_on_both_wires(
    stream: tuple[bytes, Exception | None], cuts: list[int]
) -> None:
    body, cut = stream
    assert_same(split(body, cuts), cut)


def test_fast_is_the_default() -> None:
    assert AnthropicModel("claude-test", client=anthropic.Anthropic(api_key=KEY)).wire == "fast"
