"""Differential tests: GeminiModel's ``wire="fast"`` path against the SDK path.

The same bytes, cut into network reads at random places, go through the SDK path and the
fast path, sync and async; the chunks (and any error's class, flags and cause type) must be
identical. Streams are the recordings in ../shared/fixtures/real/gemini and streams that
hypothesis generates: text, thought and function-call parts, signatures, usage, chunks
without candidates, blocked prompts, error payloads, bad frames and cuts; and the same
streams with one event broken (tests/wire_faults.py): non-object JSON, a field it reads
missing or of the wrong type, invalid JSON, invalid UTF-8, every error-payload shape, a
body cut anywhere. Every error is a ``ProviderError`` and every chunk is well-typed.
(A wrong-typed field the fast path does not read fails the SDK path only: the SDK
validates every field; see the module docstring of rxcontext.providers.gemini.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from replay import NO_SSL, real_files, sse
from wire_faults import EXAMPLES, assert_well_typed, broken, cause_chain, sdk_cause, truncated

from rxcontext.chunks import Chunk
from rxcontext.errors import ProviderError
from rxcontext.providers import GeminiModel
from rxcontext.providers.base import Request
from rxcontext.records import Record, RecordType

KEY = "AIzaTESTKEY-gemini-wire-0123456789abcdef"
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
        str(exc),
        cause_chain(exc),
    )


def _sync(served: Served, wire: str) -> Outcome:
    out: list[Chunk] = []
    try:
        for chunk in served.model(wire).iter_chunks(HI):
            out.append(chunk)
    except Exception as exc:
        return out, _error_key(exc)
    finally:
        assert_well_typed(out)
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


@pytest.mark.fixtures
@pytest.mark.skipif(
    not FILES, reason="recorded fixtures not found: ../shared/fixtures/real is absent"
)
def test_recordings_never_fall_back_to_the_sdk_models(monkeypatch: Any) -> None:
    """The fast path reads well-formed events itself: the SDK's conversion and model are
    used only for an event that is not what it expects."""
    from google.genai import models as genai_models

    built: list[Any] = []
    for name in ("_GenerateContentResponse_from_mldev", "_GenerateContentResponse_from_vertex"):
        convert = getattr(genai_models, name)

        def spy(*args: Any, convert: Any = convert) -> Any:
            built.append(args[0])
            return convert(*args)

        monkeypatch.setattr(genai_models, name, spy)
    for path in FILES:
        served = Served([path.read_bytes()])
        assert _sync(served, "fast")[1] is None and _async(served, "fast")[1] is None
    assert built == []


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
    for key in (
        "candidatesTokenCount",
        "cachedContentTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
    ):
        if draw(st.booleans()):
            out[key] = draw(st.integers(0, 500))
    return out


@st.composite
def gemini_event(draw: st.DrawFn) -> dict[str, Any]:
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
        if draw(st.integers(0, 3)) == 0:  # Google Search grounding, billed per query/prompt
            queries = st.lists(st.sampled_from(["", "lisbon", "lisbon weather"]), max_size=3)
            candidate["groundingMetadata"] = {"webSearchQueries": draw(queries)}
        out["candidates"] = [candidate]
    elif shape == "empty_candidates":
        out["candidates"] = []
    # A usage-only event has its usage: an event with no field the API sends ({}) is
    # malformed (see test_malformed_event_examples).
    if shape == "usage_only" or draw(st.booleans()):
        out["usageMetadata"] = draw(usage())
    if draw(st.integers(0, 5)):
        out["responseId"] = draw(st.sampled_from(["resp-A", "resp-B"]))
    return out


@st.composite
def stream_events(draw: st.DrawFn, finish: bool | None = None) -> list[Any]:
    events: list[Any] = draw(st.lists(gemini_event(), min_size=0, max_size=6))
    if draw(st.booleans()) if finish is None else finish:
        events.append(
            {
                "candidates": [
                    {"content": {"parts": [], "role": "model"}, "finishReason": draw(FINISH)}
                ],
                "usageMetadata": draw(usage()),
                "responseId": "resp-A",
            }
        )
    return events


@st.composite
def stream(draw: st.DrawFn) -> tuple[list[bytes], Exception | None]:
    events = draw(stream_events())
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
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream())
def test_generated_streams(case: tuple[list[bytes], Exception | None]) -> None:
    pieces, error = case
    assert_same(pieces, error)


# -- malformed events: both paths end alike, with a ProviderError ------------------------

_PART_KEYS = {"text", "thought", "functionCall", "thoughtSignature"}
_COUNTS = {
    "promptTokenCount",
    "candidatesTokenCount",
    "totalTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
}


def read_by_fast_path(path: tuple[Any, ...]) -> bool:
    """Whether the fast path reads the value at ``path`` of an event (the SDK validates
    all of them; a wrong-typed value elsewhere is the one known difference)."""
    head, rest = path[0], path[1:]
    if head == "responseId":
        return not rest
    if head == "usageMetadata":
        return not rest or (len(rest) == 1 and rest[0] in _COUNTS)
    if head == "promptFeedback":
        return not rest or (len(rest) == 1 and rest[0] in ("blockReason", "blockReasonMessage"))
    if head != "candidates":
        return False
    if len(rest) < 1:
        return True
    if rest[0] != 0:
        return False
    if len(rest) == 1:
        return True
    if rest[1] == "finishReason":
        return len(rest) == 2
    if rest[1] == "groundingMetadata":
        return len(rest) == 2 or (rest[2] == "webSearchQueries" and len(rest) <= 4)
    if rest[1] != "content":
        return False
    if len(rest) <= 3:
        return len(rest) == 2 or rest[2] == "parts"
    if len(rest) == 4:
        return True  # a part
    key = rest[4]
    if key not in _PART_KEYS:
        return False
    if key == "functionCall":
        return len(rest) == 5 or rest[5] in ("name", "id", "args")
    return len(rest) == 5


ERROR_PAYLOADS = [
    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
    {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}},
    {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
    {"error": {"code": 999, "message": "odd"}},
    {"error": {"code": "503", "message": "code as text"}},
    {"error": {"message": "no code"}},
    {"error": "just text"},
    {"error": ["a", "list"]},
    {"error": None},
    {"other": 1, "error": {"code": 500}},
]


@st.composite
def broken_stream(draw: st.DrawFn) -> tuple[list[bytes], Exception | None]:
    """A stream with one event broken (a field it reads), an error payload, or a cut."""
    events: list[Any] = draw(stream_events(finish=True))
    how = draw(st.sampled_from(["event"] * 3 + ["error_payload"] * 2 + ["cut", "clean"]))
    at = draw(st.integers(0, len(events) - 1))
    if how == "event":
        _, data = draw(broken(events[at], read_by_fast_path))
        events[at] = data
    elif how == "error_payload":
        events.insert(at, draw(st.sampled_from(ERROR_PAYLOADS)))
    event(f"broken: {how}")
    frames = [e if isinstance(e, bytes) else json.dumps(e).encode() for e in events]
    body = b"".join(b"data: " + f + b"\n\n" for f in frames)
    error: Exception | None = None
    if how == "cut":
        body = truncated(draw, body)
        if draw(st.booleans()):
            error = httpx2.ReadError("reset")
    cuts = draw(st.lists(st.integers(0, max(len(body), 1)), max_size=12))
    return split(body, cuts), error


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(broken_stream())
def test_broken_events_end_both_paths_alike(case: tuple[list[bytes], Exception | None]) -> None:
    pieces, error = case
    _, outcome = assert_same(pieces, error)
    event(f"error_type: {outcome[2] if outcome else None}")


HI_EVENT = {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]}
END_EVENT = {
    "candidates": [{"content": {"parts": [{"text": "!"}], "role": "model"}, "finishReason": "STOP"}]
}


def _body(*middle: bytes) -> bytes:
    return sse(HI_EVENT) + b"".join(middle) + sse(END_EVENT)


@pytest.mark.parametrize(
    ("frame", "error_type"),
    [
        pytest.param(b"data: []\n\n", "invalid_event", id="array"),
        pytest.param(b'data: [{"candidates": []}]\n\n', "invalid_event", id="array-of-event"),
        pytest.param(b'data: "lo"\n\n', "invalid_event", id="string"),
        pytest.param(b"data: 5\n\n", "invalid_event", id="number"),
        pytest.param(b"data: null\n\n", "invalid_event", id="null"),
        pytest.param(b"data: {}\n\n", "invalid_event", id="empty-object"),
        pytest.param(b'data: {"unknown": 1}\n\n', "invalid_event", id="unknown-fields-only"),
        pytest.param(
            b'data: {"candidates": [{"content": {"parts": [{"text": 5}]}}]}\n\n',
            "invalid_event",
            id="text-number",
        ),
        pytest.param(
            b'data: {"candidates": [{"content": "lo"}]}\n\n', "invalid_event", id="content-str"
        ),
        pytest.param(
            sse({"candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": 3}]}),
            "invalid_event",
            id="finish-number",
        ),
        pytest.param(
            sse({"candidates": [{"content": {"parts": [{"functionCall": {"args": [1]}}]}}]}),
            "invalid_event",
            id="args-list",
        ),
        pytest.param(
            sse({"candidates": [{"content": {"parts": [{"text": "", "thought": "maybe"}]}}]}),
            "invalid_event",
            id="thought-of-empty-text",
        ),
        pytest.param(
            sse({"candidates": [{"content": {"parts": [{"text": 0}]}}]}),
            "invalid_event",
            id="text-zero",
        ),
        pytest.param(
            sse({"candidates": [{"content": {"parts": [{"text": "a", "thoughtSignature": 0}]}}]}),
            "invalid_event",
            id="signature-zero",
        ),
        pytest.param(b'data: {"candidates": [}\n\n', "invalid_json", id="bad-json"),
        pytest.param(
            b'data: {"error": {"message": "no code"}}\n\n', "invalid_event", id="error-no-code"
        ),
    ],
)
def test_malformed_event_examples(frame: bytes, error_type: str) -> None:
    chunks, error = assert_same([_body(frame)])
    assert [c.text for c in chunks] == ["Hel"]
    assert error is not None and error[:3] == (False, None, error_type)
    assert "base_url" in error[4]


def test_the_sdk_coerces_and_so_does_the_fast_path() -> None:
    """A count sent as ``"7"`` and ``thought: "true"``: the SDK's model coerces them."""
    odd = {
        "candidates": [{"content": {"parts": [{"text": "hm", "thought": "true"}]}}],
        "usageMetadata": {"promptTokenCount": "7", "totalTokenCount": 9.0},
    }
    chunks, error = assert_same([_body(sse(odd))])
    assert error is None
    assert [(c.kind.name, c.text) for c in chunks if c.text] == [
        ("TEXT", "Hel"),
        ("THINKING", "hm"),
        ("TEXT", "!"),
    ]
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert (usage.input_tokens, usage.total_tokens) == (7, 9)


def test_invalid_utf8_is_decoded_as_the_sdk_decodes_it() -> None:
    """Both paths read bytes that are not UTF-8 as U+FFFD, as google-genai does."""
    bad = b'data: {"candidates": [{"content": {"parts": [{"text": "l\xffo"}]}}]}\n\n'
    chunks, error = assert_same([_body(bad)])
    assert error is None and [c.text for c in chunks if c.text] == ["Hel", "l\ufffdo", "!"]


@pytest.mark.parametrize("payload", ERROR_PAYLOADS[:4], ids=lambda p: str(p["error"]["code"]))
def test_error_payload_has_the_sdk_exception_on_both_paths(payload: Any) -> None:
    served = Served([_body(sse(payload))])
    errors: dict[str, BaseException] = {}
    for wire in ("sdk", "fast"):
        try:
            list(served.model(wire).iter_chunks(HI))
        except ProviderError as exc:
            errors[wire] = exc
    for exc in errors.values():
        api = sdk_cause(exc, genai_errors.APIError)
        assert api is not None and api.details == payload
    sdk, fast = (sdk_cause(errors[w], genai_errors.APIError) for w in ("sdk", "fast"))
    assert type(sdk) is type(fast) and str(sdk) == str(fast)
    assert type(sdk.response) is type(fast.response)  # type: ignore[union-attr]


# -- framing: the SDK's, not plain SSE -------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b": keep-alive", b"event: message", b"data:{}", b"id: 1", b'{"error": {"code": 503,', b"d"],
)
def test_lines_other_than_data_are_raw_json_on_both_paths(line: bytes) -> None:
    """google-genai reads a line that is not ``data: `` (nor blank) as raw JSON, for error
    bodies sent line by line: an SSE comment fails both paths alike (Gemini sends none)."""
    first = sse({"candidates": [{"content": {"parts": [{"text": "hi"}]}}]})
    chunks, error = assert_same([first + line + b"\n\n" + sse(END_EVENT)])
    # An unbalanced line waits for its closing braces (the end of the body, here); data
    # lines go on meanwhile.
    unbalanced = line.count(b"{") > line.count(b"}")
    assert [c.text for c in chunks if c.text] == (["hi", "!"] if unbalanced else ["hi"])
    # ... and, still open there, it is an error body the body ended in the middle of.
    expected = "incomplete_stream" if unbalanced else ("invalid_json", "invalid_event")
    assert error is not None and error[2] in expected


def test_a_raw_json_error_body_split_over_lines_is_raised_on_both_paths() -> None:
    body = b'{"error": {\n"code": 503,\n"message": "overloaded",\n"status": "UNAVAILABLE"}}\n'
    chunks, error = assert_same([sse(HI_EVENT) + body])
    assert [c.text for c in chunks] == ["Hel"]
    assert error is not None and error[:3] == (True, 503, "UNAVAILABLE")


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("max_tokens", "MAX_TOKENS"),
        ("Safety", "SAFETY"),
        ("STOP", "STOP"),
        ("no_such_reason", "no_such_reason"),
    ],
)
def test_a_finish_reason_in_another_case_is_read_as_the_sdks_enum_reads_it(
    sent: str, read: str
) -> None:
    """A Gemini-compatible gateway that sends ``"finishReason": "max_tokens"``: the SDK's
    case-insensitive enum makes it ``MAX_TOKENS`` (a value it does not know stays as sent),
    and so does the fast path, so the stored reason and ``truncated`` agree on both wires."""
    end = {"candidates": [{"content": {"parts": [{"text": "!"}]}, "finishReason": sent}]}
    with pytest.warns() if sent == "no_such_reason" else contextlib.nullcontext():
        chunks, error = assert_same([sse(HI_EVENT) + sse(end)])
    assert error is None and chunks[-1].finish_reason == read


@pytest.mark.parametrize(("sent", "read"), [("safety", "SAFETY"), ("Other", "OTHER")])
def test_a_block_reason_in_another_case_is_read_as_the_sdks_enum_reads_it(
    sent: str, read: str
) -> None:
    blocked = {"promptFeedback": {"blockReason": sent}, "usageMetadata": {"promptTokenCount": 4}}
    _, error = assert_same([sse(blocked)])
    assert error is not None
    assert error[:3] == (False, None, f"prompt_blocked:{read}")


@pytest.mark.parametrize("cut", [8, 40, 90, -6])
def test_a_body_cut_partway_through_an_event_is_an_incomplete_stream(cut: int) -> None:
    """The connection closed (cleanly) in the middle of the first event: the SDK reads the
    unterminated last event and fails on its JSON. Both paths report a cut stream, retryable,
    as OpenAI and Anthropic do for the same cut, not a server that does not speak the API."""
    body = sse(END_EVENT)[:cut]
    chunks, error = assert_same([body])
    assert chunks == []
    assert error is not None and error[:3] == (True, None, "incomplete_stream")
    assert "base_url" not in error[4]


def test_an_event_cut_short_before_its_blank_line_is_an_incomplete_stream_too() -> None:
    """Whether the frame is cut is told by its text (an object that stops short): the SDK's
    error does not say where the frame ended, and both paths must agree."""
    chunks, error = assert_same([_body(b'data: {"candidates": [\n\n')])
    assert [c.text for c in chunks] == ["Hel"]
    assert error is not None and error[:3] == (True, None, "incomplete_stream")


def test_a_raw_json_error_body_cut_short_is_an_incomplete_stream() -> None:
    body = b'{"error": {\n"code": 503,\n"message": "overlo'
    chunks, error = assert_same([sse(HI_EVENT) + body])
    assert [c.text for c in chunks] == ["Hel"]
    assert error is not None and error[:3] == (True, None, "incomplete_stream")
