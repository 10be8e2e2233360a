"""Differential tests: GeminiModel's ``wire="fast"`` path against the SDK path.

The same bytes, cut into network reads at random places, go through the SDK path and the
fast path, sync and async; the chunks (and any error's class, flags and cause type) must be
identical. Streams are the recordings in ../shared/fixtures/real/gemini and streams that
hypothesis generates: text, thought and function-call parts, signatures, usage, chunks
without candidates, blocked prompts, error payloads, bad frames and cuts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay import real_files, sse

from rxcontext.chunks import Chunk
from rxcontext.errors import ProviderError
from rxcontext.providers import GeminiModel
from rxcontext.providers.base import Request
from rxcontext.records import Record, RecordType

KEY = "AIzaTESTKEY-gemini-wire-0123456789abcdef"
NO_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
HI = Request([Record(0, "ctx", RecordType.PROMPT, "hi", True, 0, datetime(2026, 1, 1, tzinfo=UTC))])

# -- a transport that serves one body in given pieces --------------------------------------


class _Pieces(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, served: Served) -> None:
        self._served = served

    def __iter__(self) -> Iterator[bytes]:
        yield from self._served.pieces
        if self._served.error is not None:
            raise self._served.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._served.pieces:
            yield piece
        if self._served.error is not None:
            raise self._served.error

    def close(self) -> None:
        with self._served.lock:
            self._served.closed += 1

    async def aclose(self) -> None:
        self.close()


class Served:
    """Serves ``pieces`` (then raises ``error``) for every request."""

    def __init__(self, pieces: list[bytes], error: Exception | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.closed = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.transport = httpx2.MockTransport(self._handle)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        headers = {"content-type": "text/event-stream", "retry-after": "3"}
        return httpx2.Response(200, headers=headers, stream=_Pieces(self))

    def model(self, wire: str) -> GeminiModel:
        client = genai.Client(
            api_key=KEY,
            http_options=types.HttpOptions(
                httpx_client=httpx2.Client(transport=self.transport),
                httpx_async_client=httpx2.AsyncClient(transport=self.transport),
                async_client_args={"ssl": NO_SSL},
            ),
        )
        return GeminiModel("gemini-test", client=client, wire=wire)  # type: ignore[arg-type]


Outcome = tuple[list[Chunk], tuple[Any, ...] | None]


def _error_key(exc: BaseException | None) -> tuple[Any, ...] | None:
    if exc is None:
        return None
    assert isinstance(exc, ProviderError), repr(exc)
    assert KEY not in str(exc)
    return (
        exc.retryable,
        exc.status_code,
        exc.error_type,
        exc.retry_after,
        type(exc.__cause__),
    )


def _sync(served: Served, wire: str) -> Outcome:
    out: list[Chunk] = []
    try:
        for chunk in served.model(wire).iter_chunks(HI):
            out.append(chunk)
    except Exception as exc:
        return out, _error_key(exc)
    return out, None


def _async(served: Served, wire: str) -> Outcome:
    async def run() -> Outcome:
        out: list[Chunk] = []
        try:
            async for chunk in served.model(wire).aiter_chunks(HI):
                out.append(chunk)
        except Exception as exc:
            return out, _error_key(exc)
        return out, None

    return asyncio.run(run())


def outcomes(pieces: list[bytes], error: Exception | None = None) -> dict[str, Outcome]:
    served = Served(pieces, error)
    result = {
        f"{wire}-{name}": run(served, wire)
        for wire in ("sdk", "fast")
        for name, run in (("sync", _sync), ("async", _async))
    }
    assert served.closed == served.requests == 4  # every response was closed
    return result


def assert_same(pieces: list[bytes], error: Exception | None = None) -> Outcome:
    results = outcomes(pieces, error)
    reference = results["sdk-sync"]
    for name, outcome in results.items():
        assert outcome == reference, name
    return reference


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(body)})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


FAST_SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- recorded streams, cut anywhere ------------------------------------------------------

FILES = real_files("gemini")


@pytest.mark.fixtures
@pytest.mark.skipif(
    not FILES, reason="recorded fixtures not found: ../shared/fixtures/real is absent"
)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
@FAST_SETTINGS
@given(data=st.data())
def test_recordings_split_anywhere(path: Any, data: st.DataObject) -> None:
    body = path.read_bytes()
    whole = assert_same([body])
    assert whole[1] is None
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    assert assert_same(split(body, cuts)) == whole


@pytest.mark.fixtures
@pytest.mark.skipif(
    not FILES, reason="recorded fixtures not found: ../shared/fixtures/real is absent"
)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_recordings_byte_by_byte_and_cut(path: Any) -> None:
    body = path.read_bytes()
    whole = assert_same([body])
    assert assert_same([body[i : i + 1] for i in range(len(body))]) == whole
    _, error = assert_same([body[: len(body) // 2]], httpx2.ReadError("reset"))
    assert error is not None and error[2] == "connection_error"


# -- generated streams ---------------------------------------------------------------------

TEXT = st.text(
    alphabet=st.sampled_from([*'ab xyz{}[]"\\:,\n\t\r/é中😀', "\u2028", "\u2029", "\x85"]),
    max_size=12,
)
SIGNATURE = st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())
JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
FINISH = st.sampled_from(
    [
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "MALFORMED_FUNCTION_CALL",
        "OTHER",
        "NEW_REASON_X",
    ]
)


@st.composite
def part(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "thought", "call", "code", "empty"]))
    out: dict[str, Any]
    if kind == "text":
        out = {"text": draw(TEXT)}
    elif kind == "thought":
        out = {"text": draw(TEXT), "thought": True}
    elif kind == "call":
        call: dict[str, Any] = {"name": draw(st.sampled_from(["f", "weather", "get_x"]))}
        if draw(st.booleans()):
            call["args"] = draw(st.dictionaries(TEXT, JSON_VALUE, max_size=3))
        if draw(st.booleans()):
            call["id"] = draw(st.sampled_from(["id1", "abc", ""]))
        out = {"functionCall": call}
    elif kind == "code":
        out = {"executableCode": {"language": "PYTHON", "code": draw(TEXT)}}
    else:
        out = {"text": ""}
    if draw(st.integers(0, 3)) == 0:
        out["thoughtSignature"] = draw(SIGNATURE)
    return out


@st.composite
def usage(draw: st.DrawFn) -> dict[str, int]:
    out = {
        "promptTokenCount": draw(st.integers(0, 500)),
        "totalTokenCount": draw(st.integers(0, 2000)),
    }
    for key in ("candidatesTokenCount", "cachedContentTokenCount", "thoughtsTokenCount"):
        if draw(st.booleans()):
            out[key] = draw(st.integers(0, 500))
    return out


@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(["candidate"] * 6 + ["usage_only", "empty_candidates"]))
    out: dict[str, Any] = {}
    if shape == "candidate":
        candidate: dict[str, Any] = {
            "content": {"parts": draw(st.lists(part(), max_size=4)), "role": "model"}
        }
        if draw(st.integers(0, 4)) == 0:
            candidate["finishReason"] = draw(FINISH)
        if draw(st.booleans()):
            candidate["index"] = 0
        out["candidates"] = [candidate]
    elif shape == "empty_candidates":
        out["candidates"] = []
    if draw(st.booleans()):
        out["usageMetadata"] = draw(usage())
    if draw(st.integers(0, 5)):
        out["responseId"] = draw(st.sampled_from(["resp-A", "resp-B"]))
    return out


@st.composite
def stream(draw: st.DrawFn) -> tuple[list[bytes], Exception | None]:
    events: list[Any] = draw(st.lists(event(), min_size=0, max_size=6))
    if draw(st.booleans()):
        events.append(
            {
                "candidates": [
                    {"content": {"parts": [], "role": "model"}, "finishReason": draw(FINISH)}
                ],
                "usageMetadata": draw(usage()),
                "responseId": "resp-A",
            }
        )
    ending = draw(
        st.sampled_from(
            ["clean"] * 4 + ["error_payload", "bad_json", "blocked", "cut", "no_blank_line"]
        )
    )
    if ending == "error_payload":
        code = draw(st.sampled_from([400, 403, 429, 500, 503]))
        status = draw(
            st.sampled_from(["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "INTERNAL"])
        )
        events.append({"error": {"code": code, "message": draw(TEXT), "status": status}})
    elif ending == "bad_json":
        events.append(draw(st.sampled_from(['{"candidates": [', "not json", '{"a": 1} trailing'])))
    elif ending == "blocked":
        events.append(
            {
                "promptFeedback": {
                    "blockReason": draw(st.sampled_from(["SAFETY", "OTHER", "BLOCKLIST"]))
                }
            }
        )
    ensure_ascii = draw(st.booleans())
    frames = [e if isinstance(e, str) else json.dumps(e, ensure_ascii=ensure_ascii) for e in events]
    body = sse(*frames, crlf=draw(st.booleans()))
    error: Exception | None = None
    if ending == "cut":
        body = body[: draw(st.integers(0, len(body)))]
        error = draw(
            st.sampled_from(
                [
                    httpx2.ReadError("reset"),
                    httpx2.RemoteProtocolError("eof"),
                    httpx2.ReadTimeout("slow"),
                ]
            )
        )
    elif ending == "no_blank_line":
        body = body.rstrip(b"\r\n")
    cuts = draw(st.lists(st.integers(0, max(len(body), 1)), max_size=12))
    return split(body, cuts), error


@pytest.mark.filterwarnings("ignore:NEW_REASON_X is not a valid:UserWarning")
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream())
def test_generated_streams(case: tuple[list[bytes], Exception | None]) -> None:
    pieces, error = case
    assert_same(pieces, error)


# -- known difference ----------------------------------------------------------------------


def test_comment_lines_are_skipped_by_the_fast_path_only() -> None:
    """SSE comments: the fast path skips them (SSE rules); the SDK tries to parse them as JSON.

    Gemini does not send comments; this documents the one framing difference.
    """
    body = (
        sse({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]})
        + b": keep-alive\n\n"
    )
    results = outcomes([body])
    assert results["fast-sync"] == results["fast-async"]
    assert results["fast-sync"][1] is None
    assert results["sdk-sync"][1] is not None and results["sdk-sync"][1][2] == "invalid_response"
