"""GeminiModel through the real google-genai SDK on a replayed httpx2 transport.

Recorded streams come from ../shared/fixtures/real/gemini; crafted streams (built with
``replay.sse``) cover what no recording shows: non-STOP finish reasons, blocked prompts,
in-stream error payloads, cuts, HTTP errors. Every stream test runs on both wire paths,
sync and async, and checks that all of them give the same chunks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from replay import NO_SSL, REAL, Replay, collect_async, collect_sync, real_files, real_fixture, sse
from replay import Reply as Canned

import rxcontext
from rxcontext import ContextWindow, StreamInterrupted
from rxcontext.chunks import Chunk, ChunkKind, Reply, Usage
from rxcontext.errors import ProviderError
from rxcontext.providers import GeminiModel
from rxcontext.providers._gemini_request import spliced_client
from rxcontext.providers.base import Request, reply_from_chunks
from rxcontext.providers.gemini import build_contents
from rxcontext.records import Record, RecordType
from rxcontext.tools import Tool

KEY = "AIzaTESTKEY-gemini-SECRET-0123456789abcdef"
WIRES = ("sdk", "fast")
SIG = base64.b64encode(b"\x12\x34opaque-signature\xff\xfe").decode()
SIG2 = base64.b64encode(b"second signature bytes").decode()

# -- helpers ---------------------------------------------------------------------------


def record(
    kind: RecordType,
    content: str = "",
    *,
    tool_call_id: str | None = None,
    tool_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    return Record(
        id=0,
        context_id="ctx",
        type=kind,
        content=content,
        live=True,
        est_tokens=0,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        tool_call_id=tool_call_id,
        tool_name=tool_name,
        metadata=metadata or {},
    )


HI = Request([record(RecordType.PROMPT, "hi")])


def client(replay: Replay) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(
            httpx_client=replay.client(),
            httpx_async_client=replay.async_client(),
            async_client_args={"ssl": NO_SSL},
        ),
    )


def model(replay: Replay, wire: str = "sdk", **params: Any) -> GeminiModel:
    return GeminiModel("gemini-test", client=client(replay), wire=wire, **params)  # type: ignore[arg-type]


def play(*bodies: bytes | Path | Canned, request: Request = HI) -> list[Chunk]:
    """Chunks of a stream through every path (sdk/fast × sync/async); all must agree."""
    results = []
    for wire in WIRES:
        for collect in (collect_sync, collect_async):
            replay = Replay(*bodies)
            chunks, error = collect(model(replay, wire), request)
            assert error is None, f"{wire} {collect.__name__}: {error!r}"
            results.append(chunks)
    for other in results[1:]:
        assert other == results[0]
    return results[0]


def fail(
    *bodies: bytes | Path | Canned, key_in_body: bool = False
) -> tuple[list[Chunk], ProviderError]:
    """The chunks before, and the error of, a failing stream; identical on every path.

    The API key never shows in our error; nor in the SDK's, unless the server echoed it
    (``key_in_body``: the SDK's own exception text is not ours to scrub).
    """
    seen: list[tuple[list[Chunk], ProviderError]] = []
    for wire in WIRES:
        for collect in (collect_sync, collect_async):
            replay = Replay(*bodies)
            chunks, error = collect(model(replay, wire), HI)
            assert isinstance(error, ProviderError), f"{wire} {collect.__name__}: {error!r}"
            assert KEY not in str(error)
            if not key_in_body:
                assert KEY not in repr(error.__cause__) and KEY not in str(error.__cause__)
            assert replay.closed == len(replay.requests)
            seen.append((chunks, error))
    first_chunks, first = seen[0]
    for chunks, error in seen[1:]:
        assert chunks == first_chunks
        assert (error.retryable, error.status_code, error.error_type, error.retry_after) == (
            first.retryable,
            first.status_code,
            first.error_type,
            first.retry_after,
        )
        assert type(error.__cause__) is type(first.__cause__)
    return first_chunks, first


def event(
    *parts: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    response_id: str | None = "resp-1",
    **candidate: Any,
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    cand.update(candidate)
    out: dict[str, Any] = {"candidates": [cand], "modelVersion": "gemini-test"}
    if usage is not None:
        out["usageMetadata"] = usage
    if response_id is not None:
        out["responseId"] = response_id
    return out


def usage(prompt: int, candidates: int | None, total: int, **more: int) -> dict[str, int]:
    out = {"promptTokenCount": prompt, "totalTokenCount": total, **more}
    if candidates is not None:
        out["candidatesTokenCount"] = candidates
    return out


# -- recorded streams -------------------------------------------------------------------


def _wire_events(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def _parts(path: Path) -> list[dict[str, Any]]:
    return [
        part
        for ev in _wire_events(path)
        for cand in ev.get("candidates", [])[:1]
        for part in cand.get("content", {}).get("parts", [])
    ]


# What each recording must reduce to (besides text and thinking, which are checked
# against the parts themselves).
EXPECTED: dict[str, dict[str, Any]] = {
    "code_execution_gemini3flash.sse": {
        "calls": [],
        "usage": Usage(507, 108, 783, 0, 168),
        "response_id": "n1P6abvRFaKdz7IPkcuQ2Aw",
        "text_end": "is **-428,330,955.97745**.",
        "reply_signature": True,
    },
    "function_call_thought_signature_roundtrip_gemini3pro.1.sse": {
        "calls": [("call_QUVVadTSNJ6_qtsPvN7J8Q0_0", "get_country", {}, True, True)],
        "usage": Usage(29, 10, 241, 0, 202),
        "response_id": "QUVVadTSNJ6_qtsPvN7J8Q0",
        "text_end": "",
        "reply_signature": False,
    },
    "function_call_thought_signature_roundtrip_gemini3pro.2.sse": {
        "calls": [],
        "usage": Usage(257, 8, 265, 0, 0),
        "response_id": "REVVabaiCdq4qtsPnZu96Qo",
        "text_end": "The capital of Mexico is Mexico City.",
        "reply_signature": False,
    },
    "google_search_grounding_gemini25pro.sse": {
        "calls": [],
        # groundingMetadata.webSearchQueries: one query, billed as one search.
        "usage": Usage(119, 241, 772, 0, 412, web_search_requests=1),
        "response_id": "ftnJaMmAMcm-qtsPwvCCoAo",
        "text_end": "",
        "reply_signature": False,
    },
    "parallel_function_calls_one_chunk_gemini20.sse": {
        "calls": [
            ("call_l9cEarvcAfjC7_UPtZea-Aw_0", "get_weather", {"location": "Boston"}, False, True),
            (
                "call_l9cEarvcAfjC7_UPtZea-Aw_1",
                "get_weather",
                {"location": "New Delhi"},
                False,
                True,
            ),
        ],
        "usage": Usage(64, 11, 75, 0, 0),
        "response_id": "l9cEarvcAfjC7_UPtZea-Aw",
        "text_end": "",
        "reply_signature": False,
    },
    "parallel_function_calls_split_with_ids_gemini35.sse": {
        "calls": [
            ("dv8szvqe", "get_weather", {"location": "Boston"}, True, False),
            ("j80tal12", "get_weather", {"location": "New Delhi"}, False, False),
        ],
        "usage": Usage(71, 33, 197, 0, 93),
        "response_id": "FyIhav7bJNyw4-EP6eCsqA0",
        "text_end": "",
        "reply_signature": False,
    },
    "text_basic_gemini20.sse": {
        "calls": [],
        "usage": Usage(13, 8, 21, 0, 0),
        "response_id": "w1peaMz6INOvnvgPgYfPiQY",
        "text_end": "The capital of France is Paris.\n",
        "reply_signature": False,
    },
    "thought_summaries_gemini25pro.sse": {
        "calls": [],
        "usage": Usage(34, 469, 1290, 0, 787),
        "response_id": "beHBaJfEMIi-qtsP3769-Q8",
        "text_end": "",
        "reply_signature": True,
    },
}

GEMINI_FILES = real_files("gemini")


def test_every_recording_has_expectations() -> None:
    names = {p.name for p in GEMINI_FILES}
    if not names:
        pytest.skip("recorded fixtures not found: ../shared/fixtures/real is absent")
    assert names == set(EXPECTED)


@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_usage_counts_what_genai_prices_counts(name: str) -> None:
    """The reply's input is the prompt and the tool-use prompt (code execution, Google Search
    results fed back to the model), billed as input: genai-prices' own Google extractor, on
    the stream's last usageMetadata, is the truth (its output is candidates + thoughts)."""
    genai_prices = pytest.importorskip("genai_prices", reason="needs rxcontext[prices]")
    path = real_fixture(f"gemini/{name}")
    meta = [e["usageMetadata"] for e in _wire_events(path) if "usageMetadata" in e][-1]
    truth = genai_prices.extract_usage({"usageMetadata": meta}, provider_id="google").usage
    usage = reply_from_chunks(play(path)).usage
    assert usage is not None
    assert usage.input_tokens == truth.input_tokens
    assert usage.output_tokens + usage.reasoning_tokens == truth.output_tokens
    assert usage.total_tokens == meta["totalTokenCount"]


@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream(name: str) -> None:
    path = real_fixture(f"gemini/{name}")
    expected = EXPECTED[name]
    chunks = play(path)
    reply = reply_from_chunks(chunks)

    parts = _parts(path)
    assert reply.text == "".join(p.get("text", "") for p in parts if not p.get("thought"))
    assert reply.thinking == "".join(p.get("text", "") for p in parts if p.get("thought"))
    assert reply.text.endswith(expected["text_end"])
    assert reply.finish_reason == "STOP"
    assert reply.response_id == expected["response_id"]
    assert reply.usage == expected["usage"]

    calls = [p for p in parts if "functionCall" in p]
    assert len(reply.tool_calls) == len(expected["calls"]) == len(calls)
    for call, part, (cid, name_, args, signed, synthetic) in zip(
        reply.tool_calls, calls, expected["calls"], strict=True
    ):
        assert (call.id, call.name, dict(call.arguments)) == (cid, name_, args)
        assert call.error is None
        if signed:
            # Kept unchanged (standard base64, as the API sent it).
            assert call.metadata["thought_signature"] == part["thoughtSignature"]
        else:
            assert "thought_signature" not in call.metadata
        assert bool(call.metadata.get("gemini_synthetic_id")) is synthetic

    signatures = [p["thoughtSignature"] for p in parts if "thoughtSignature" in p]
    reply_signatures = [
        p["thoughtSignature"] for p in parts if "thoughtSignature" in p and "functionCall" not in p
    ]
    if expected["reply_signature"]:
        assert reply.metadata["gemini_thought_signature"] == reply_signatures[-1]
    else:
        assert "gemini_thought_signature" not in reply.metadata
    assert len(signatures) >= len(reply_signatures)

    # Exactly one DONE, last; USAGE chunks carry totals that only get replaced.
    assert [c.kind for c in chunks].count(ChunkKind.DONE) == 1
    assert chunks[-1].kind is ChunkKind.DONE
    assert not any(c.kind in (ChunkKind.TEXT, ChunkKind.THINKING) and not c.text for c in chunks)
    # Thought text is one thinking block without a signature: nothing for other providers.
    assert "thinking_blocks" not in reply.metadata


def _merged_response(path: Path) -> dict[str, Any]:
    """One non-streaming generateContent body with what the stream said, in order."""
    events = _wire_events(path)
    parts: list[dict[str, Any]] = []
    finish = None
    reply_signature = None
    grounding: dict[str, Any] = {}
    for ev in events:
        for cand in ev.get("candidates", [])[:1]:
            finish = cand.get("finishReason") or finish
            grounding = cand.get("groundingMetadata") or grounding
            for part in cand.get("content", {}).get("parts", []):
                if "functionCall" in part:
                    parts.append(part)
                    continue
                reply_signature = part.get("thoughtSignature") or reply_signature
                text = part.get("text")
                if not text:
                    continue
                if (
                    parts
                    and "text" in parts[-1]
                    and bool(parts[-1].get("thought")) == bool(part.get("thought"))
                ):
                    parts[-1]["text"] += text
                else:
                    parts.append({k: v for k, v in part.items() if k != "thoughtSignature"})
    if reply_signature:
        parts.append({"text": "", "thoughtSignature": reply_signature})
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}
    if grounding:
        candidate["groundingMetadata"] = grounding
    return {
        "candidates": [candidate],
        "usageMetadata": events[-1]["usageMetadata"],
        "modelVersion": events[-1].get("modelVersion"),
        "responseId": events[-1]["responseId"],
    }


JSON = {"content-type": "application/json"}


@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_complete_equals_stream(name: str) -> None:
    path = real_fixture(f"gemini/{name}")
    streamed = reply_from_chunks(play(path))
    body = json.dumps(_merged_response(path)).encode()
    replay = Replay(Canned(body, headers=JSON), Canned(body, headers=JSON))
    m = model(replay)
    assert m.complete(HI) == streamed
    assert asyncio.run(m.acomplete(HI)) == streamed
    assert replay.requests[0].url.path.endswith(":generateContent")


# -- crafted streams: parts, usage, finish reasons ------------------------------------------


def test_thoughts_text_and_signature_on_empty_text_part() -> None:
    body = sse(
        event(
            {"text": "Let me think.", "thought": True},
            usage=usage(5, None, 20, thoughtsTokenCount=15),
        ),
        event({"text": " More.", "thought": True}),
        event({"text": "Answer"}, usage=usage(5, 1, 21, thoughtsTokenCount=15)),
        event(
            {"text": "", "thoughtSignature": SIG},
            finish="STOP",
            usage=usage(5, 2, 22, thoughtsTokenCount=15),
        ),
        crlf=True,
    )
    chunks = play(body)
    assert [(c.kind, c.text, c.index) for c in chunks if c.text] == [
        (ChunkKind.THINKING, "Let me think.", 0),
        (ChunkKind.THINKING, " More.", 0),
        (ChunkKind.TEXT, "Answer", 0),
    ]
    reply = reply_from_chunks(chunks)
    assert reply.metadata["gemini_thought_signature"] == SIG
    assert reply.usage == Usage(5, 2, 22, 0, 15)
    assert chunks[-1] == Chunk(
        ChunkKind.DONE,
        finish_reason="STOP",
        response_id="resp-1",
        usage=Usage(5, 2, 22, 0, 15),
        metadata={"gemini_thought_signature": SIG},
    )


def test_usage_on_several_chunks_last_wins_and_no_candidates_chunks() -> None:
    body = sse(
        {"usageMetadata": usage(10, None, 10), "responseId": "resp-1"},  # no candidates key
        event({"text": "a"}, usage=usage(10, 1, 11)),
        event({"text": "b"}, usage=usage(10, 1, 11)),  # unchanged: no new USAGE chunk
        {"candidates": [], "usageMetadata": usage(10, 2, 12, cachedContentTokenCount=4)},
        event(
            finish="STOP", usage=usage(12, 3, 40, cachedContentTokenCount=4, thoughtsTokenCount=25)
        ),
    )
    chunks = play(body)
    usages = [c.usage for c in chunks if c.kind is ChunkKind.USAGE]
    assert usages == [
        Usage(10, 0, 10),
        Usage(10, 1, 11),
        Usage(10, 2, 12, cached_tokens=4),
        Usage(12, 3, 40, cached_tokens=4, reasoning_tokens=25),
    ]
    reply = reply_from_chunks(chunks)
    assert (reply.text, reply.usage, reply.finish_reason) == ("ab", usages[-1], "STOP")


@pytest.mark.parametrize(
    "reason", ["SAFETY", "MALFORMED_FUNCTION_CALL", "MAX_TOKENS", "RECITATION"]
)
def test_finish_reasons_are_kept_as_given(reason: str) -> None:
    message = "Malformed function call: print(x" if reason == "MALFORMED_FUNCTION_CALL" else None
    extra = {"finishMessage": message} if message else {}
    body = sse(
        event({"text": "partial "}),
        event(finish=reason, usage=usage(3, 1, 4), **extra),
    )
    chunks = play(body)
    done = chunks[-1]
    assert done.kind is ChunkKind.DONE
    assert done.finish_reason == reason
    reply = reply_from_chunks(chunks)
    assert reply.text == "partial "
    assert "gemini_finish_message" not in reply.metadata  # the SDK drops finishMessage


def test_function_calls_whole_with_stable_ids() -> None:
    body = sse(
        event({"text": "Checking."}),
        event(
            {
                "functionCall": {"name": "weather", "args": {"city": "Paris", "days": 2}},
                "thoughtSignature": SIG,
            },
            {"functionCall": {"name": "time", "args": {}}},
            {"functionCall": {"name": "echo", "args": {"x": [1, 2.5, None]}, "id": "real-id-1"}},
        ),
        event({"text": "", "thoughtSignature": SIG2}, finish="STOP", usage=usage(4, 9, 13)),
    )
    chunks = play(body)
    calls = [c for c in chunks if c.kind is ChunkKind.TOOL_CALL]
    assert calls == [
        Chunk(
            ChunkKind.TOOL_CALL,
            '{"city": "Paris", "days": 2}',
            0,
            "call_resp-1_0",
            "weather",
            metadata={"thought_signature": SIG, "gemini_synthetic_id": True},
        ),
        Chunk(
            ChunkKind.TOOL_CALL,
            "{}",
            1,
            "call_resp-1_1",
            "time",
            metadata={"gemini_synthetic_id": True},
        ),
        Chunk(ChunkKind.TOOL_CALL, '{"x": [1, 2.5, null]}', 2, "real-id-1", "echo"),
    ]
    reply = reply_from_chunks(chunks)
    assert [c.arguments for c in reply.tool_calls] == [
        {"city": "Paris", "days": 2},
        {},
        {"x": [1, 2.5, None]},
    ]
    assert reply.metadata["gemini_thought_signature"] == SIG2
    # A re-read gives the same ids.
    assert play(body) == chunks


def test_generated_ids_without_response_id_are_stable_and_distinct() -> None:
    def body(city: str) -> bytes:
        return sse(
            event(
                {"functionCall": {"name": "weather", "args": {"city": city}}},
                {"functionCall": {"name": "weather", "args": {"city": city}}},
                finish="STOP",
                response_id=None,
            )
        )

    first = [c.id for c in play(body("Paris")) if c.kind is ChunkKind.TOOL_CALL]
    again = [c.id for c in play(body("Paris")) if c.kind is ChunkKind.TOOL_CALL]
    other = [c.id for c in play(body("Rome")) if c.kind is ChunkKind.TOOL_CALL]
    assert first == again
    assert len(set(first)) == 2 and all(i and i.startswith("call_") for i in first)
    assert not set(first) & set(other)


def test_only_the_first_candidate_is_read() -> None:
    ev = event({"text": "one"}, finish="STOP")
    ev["candidates"].append({"content": {"parts": [{"text": "two"}], "role": "model"}, "index": 1})
    assert reply_from_chunks(play(sse(ev))).text == "one"


def test_parts_without_text_or_calls_do_not_crash() -> None:
    body = sse(
        event(
            {"executableCode": {"language": "PYTHON", "code": "print(1)"}, "thoughtSignature": SIG},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "1\n"}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"text": ""},
        ),
        event(
            {"text": "It printed 1."}, finish="STOP", groundingMetadata={"webSearchQueries": ["x"]}
        ),
    )
    reply = reply_from_chunks(play(body))
    assert reply.text == "It printed 1."
    assert reply.tool_calls == ()
    assert reply.metadata == {"gemini_thought_signature": SIG}


# -- crafted streams: errors -------------------------------------------------------------


def test_blocked_prompt_is_a_provider_error() -> None:
    body = sse(
        {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "nope"},
            "usageMetadata": usage(7, None, 7),
            "responseId": "resp-b",
        }
    )
    chunks, error = fail(body)
    assert chunks == []
    assert error.error_type == "prompt_blocked:PROHIBITED_CONTENT"
    assert not error.retryable
    assert "PROHIBITED_CONTENT" in str(error) and "nope" in str(error)


def test_safety_block_in_prompt_feedback() -> None:
    _, error = fail(sse({"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}}))
    assert error.error_type == "prompt_blocked:SAFETY"
    assert not error.retryable


def test_stream_without_finish_reason_is_incomplete() -> None:
    chunks, error = fail(sse(event({"text": "Hel"}), event({"text": "lo"})))
    assert [c.text for c in chunks if c.kind is ChunkKind.TEXT] == ["Hel", "lo"]
    assert error.error_type == "incomplete_stream"
    assert error.retryable


@pytest.mark.parametrize(
    ("code", "status", "cls", "retryable"),
    [
        (503, "UNAVAILABLE", genai_errors.ServerError, True),
        (500, "INTERNAL", genai_errors.ServerError, True),
        (429, "RESOURCE_EXHAUSTED", genai_errors.ClientError, True),
        (400, "INVALID_ARGUMENT", genai_errors.ClientError, False),
    ],
)
def test_error_payload_mid_stream(code: int, status: str, cls: type, retryable: bool) -> None:
    body = sse(
        event({"text": "Hello"}),
        {"error": {"code": code, "message": "The model is overloaded.", "status": status}},
        event({"text": " never"}, finish="STOP"),
    )
    chunks, error = fail(body)
    assert [c.text for c in chunks] == ["Hello"]
    assert (error.status_code, error.error_type, error.retryable) == (code, status, retryable)
    assert "The model is overloaded." in str(error)
    assert type(error.__cause__) is cls  # what the SDK raises for the payload


@pytest.mark.parametrize("payload", [{"error": {"message": "no code"}}, {"error": "text"}])
def test_error_payload_without_code(payload: dict[str, Any]) -> None:
    _, error = fail(sse(event({"text": "Hi"}), payload))
    assert error.error_type == "invalid_event"
    assert not error.retryable


def test_frame_that_is_not_json() -> None:
    chunks, error = fail(sse(event({"text": "Hi"}), "{not json"))
    assert [c.text for c in chunks] == ["Hi"]
    assert error.error_type == "invalid_json"
    assert isinstance(error.__cause__, genai_errors.UnknownApiResponseError)


@pytest.mark.parametrize(
    ("status", "name", "retryable"),
    [
        (400, "INVALID_ARGUMENT", False),
        (401, "UNAUTHENTICATED", False),
        (403, "PERMISSION_DENIED", False),
        (404, "NOT_FOUND", False),
        (429, "RESOURCE_EXHAUSTED", True),
        (500, "INTERNAL", True),
        (503, "UNAVAILABLE", True),
    ],
)
def test_http_errors(status: int, name: str, retryable: bool) -> None:
    body = json.dumps(
        {"error": {"code": status, "message": f"key {KEY} said no", "status": name}}
    ).encode()
    headers = {"content-type": "application/json", "retry-after": "7"}
    chunks, error = fail(Canned(body, status=status, headers=headers), key_in_body=True)
    assert chunks == []
    assert (error.status_code, error.error_type, error.retryable) == (status, name, retryable)
    assert error.retry_after == 7.0
    assert error.provider == "gemini"
    cls = genai_errors.ClientError if status < 500 else genai_errors.ServerError
    assert type(error.__cause__) is cls
    if status in (401, 403):
        assert "GEMINI_API_KEY" in str(error)


def test_http_error_in_complete() -> None:
    body = json.dumps({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}).encode()
    replay = Replay(Canned(body, status=503, headers=JSON), Canned(body, status=503, headers=JSON))
    m = model(replay)
    with pytest.raises(ProviderError) as info:
        m.complete(HI)
    assert info.value.retryable and info.value.status_code == 503
    with pytest.raises(ProviderError) as ainfo:
        asyncio.run(m.acomplete(HI))
    assert ainfo.value.retryable and isinstance(ainfo.value.__cause__, genai_errors.ServerError)


def test_blocked_prompt_in_complete() -> None:
    body = json.dumps({"promptFeedback": {"blockReason": "SAFETY"}, "responseId": "r"}).encode()
    replay = Replay(Canned(body, headers=JSON), Canned(body, headers=JSON))
    m = model(replay)
    with pytest.raises(ProviderError) as info:
        m.complete(HI)
    assert info.value.error_type == "prompt_blocked:SAFETY" and not info.value.retryable
    with pytest.raises(ProviderError):
        asyncio.run(m.acomplete(HI))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx2.ReadError("connection reset by peer"), "connection_error"),
        (httpx2.DecodingError("corrupt gzip body"), "connection_error"),
        (httpx2.RemoteProtocolError("peer closed connection"), "connection_error"),
        (httpx2.ReadTimeout("read timed out"), "timeout"),
    ],
)
def test_transport_error_mid_stream(error: Exception, kind: str) -> None:
    body = sse(
        event({"text": "one"}), event({"text": "two"}), event({"text": "three"}, finish="STOP")
    )
    chunks, exc = fail(Canned(body, cut_after=2, error=error))
    assert [c.text for c in chunks] == ["one", "two"]
    assert (exc.error_type, exc.retryable, exc.status_code) == (kind, True, None)
    assert type(exc.__cause__) is type(error)


@pytest.mark.parametrize("wire", WIRES)
def test_transport_error_at_connect(wire: str) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused")

    transport = httpx2.MockTransport(refuse)
    c = genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(
            httpx_client=httpx2.Client(transport=transport),
            httpx_async_client=httpx2.AsyncClient(transport=transport),
            async_client_args={"ssl": NO_SSL},
        ),
    )
    m = GeminiModel("gemini-test", client=c, wire=wire)  # type: ignore[arg-type]
    for collect in (collect_sync, collect_async):
        chunks, exc = collect(m, HI)
        assert chunks == []
        assert isinstance(exc, ProviderError)
        assert (exc.error_type, exc.retryable) == ("connection_error", True)
        assert isinstance(exc.__cause__, httpx2.ConnectError)
        assert KEY not in str(exc)


# -- cancellation ---------------------------------------------------------------------------

LONG = sse(*[event({"text": f"w{i} "}) for i in range(6)], event(finish="STOP"))


@pytest.mark.parametrize("wire", WIRES)
def test_close_sync_generator_closes_response(wire: str) -> None:
    replay = Replay(LONG)
    chunks = model(replay, wire).iter_chunks(HI)
    assert next(chunks).text == "w0 "
    assert replay.closed == 0
    chunks.close()  # type: ignore[attr-defined]
    assert replay.closed == 1


@pytest.mark.parametrize("wire", WIRES)
def test_garbage_collected_sync_generator_closes_response(wire: str) -> None:
    replay = Replay(LONG)
    chunks = model(replay, wire).iter_chunks(HI)
    next(chunks)
    del chunks
    gc.collect()
    assert replay.closed == 1


@pytest.mark.parametrize("wire", WIRES)
def test_aclose_async_generator_closes_response(wire: str) -> None:
    replay = Replay(LONG)

    async def run() -> None:
        chunks = model(replay, wire).aiter_chunks(HI)
        assert (await anext(chunks)).text == "w0 "
        assert replay.closed == 0
        await chunks.aclose()  # type: ignore[attr-defined]
        assert replay.closed == 1

    asyncio.run(run())


@pytest.mark.parametrize("wire", WIRES)
def test_cancelled_task_closes_response(wire: str) -> None:
    replay = Replay(LONG)

    async def run() -> None:
        got = asyncio.Event()

        async def consume() -> None:
            async with contextlib.aclosing(model(replay, wire).aiter_chunks(HI)) as chunks:
                async for _ in chunks:
                    got.set()
                    await asyncio.Event().wait()  # hold the stream open until cancelled

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert replay.closed == 1

    asyncio.run(run())


@pytest.mark.parametrize("wire", WIRES)
def test_garbage_collected_async_generator_closes_response(wire: str) -> None:
    replay = Replay(LONG)

    async def run() -> None:
        chunks = model(replay, wire).aiter_chunks(HI)
        await anext(chunks)
        del chunks
        gc.collect()
        # The event loop's async-generator finalizer runs aclose() as a task.
        for _ in range(5):
            await asyncio.sleep(0)
        assert replay.closed == 1

    asyncio.run(run())


# -- requests ---------------------------------------------------------------------------------


def test_second_turn_matches_the_recording() -> None:
    """Round trip of a thought signature on a function call (gemini-3-pro recording)."""
    first = real_fixture("gemini/function_call_thought_signature_roundtrip_gemini3pro.1.sse")
    second = real_fixture("gemini/function_call_thought_signature_roundtrip_gemini3pro.2.sse")
    recorded = json.loads(
        (
            REAL / "gemini/function_call_thought_signature_roundtrip_gemini3pro.2.request.json"
        ).read_text()
    )
    recorded1 = json.loads(
        (
            REAL / "gemini/function_call_thought_signature_roundtrip_gemini3pro.1.request.json"
        ).read_text()
    )
    tool = Tool("get_country", "")
    question = recorded1["contents"][0]["parts"][0]["text"]
    for wire in WIRES:
        replay = Replay(first, second)
        m = model(replay, wire)
        turn1 = [record(RecordType.PROMPT, question)]
        reply = reply_from_chunks(m.iter_chunks(Request(turn1, tools=[tool])))
        (call,) = reply.tool_calls
        # The window stores the reply and its call like this.
        turn2 = [
            *turn1,
            record(RecordType.MODEL_RESP, reply.text, metadata=dict(reply.metadata)),
            record(
                RecordType.TOOL_CALL,
                call.raw,
                tool_call_id=call.id,
                tool_name=call.name,
                metadata=dict(call.metadata),
            ),
            record(RecordType.TOOL_OUTPUT, "Mexico", tool_call_id=call.id, tool_name=call.name),
        ]
        answer = reply_from_chunks(m.iter_chunks(Request(turn2, tools=[tool])))
        assert answer.text == "The capital of Mexico is Mexico City."

        sent1, sent2 = replay.bodies
        assert sent1["contents"] == recorded1["contents"]
        assert sent2["contents"][0] == recorded["contents"][0]
        model_turn, outputs = sent2["contents"][1], sent2["contents"][2]
        rec_model, rec_outputs = recorded["contents"][1], recorded["contents"][2]
        assert model_turn["role"] == rec_model["role"] == "model"
        (part,) = model_turn["parts"]
        (rec_part,) = rec_model["parts"]
        # The signature goes back byte for byte (the SDK sends url-safe base64, as recorded).
        assert part["thoughtSignature"] == rec_part["thoughtSignature"]
        assert base64.urlsafe_b64decode(part["thoughtSignature"]) == base64.b64decode(
            call.metadata["thought_signature"]
        )
        # Gemini gave no id: ours was generated, so it is not sent as if Gemini chose it.
        assert part["functionCall"] == {"name": "get_country", "args": {}}
        assert {k: v for k, v in rec_part["functionCall"].items() if k != "id"} == part[
            "functionCall"
        ]
        assert outputs["role"] == rec_outputs["role"] == "user"
        (response,) = outputs["parts"]
        assert (
            response["functionResponse"]["name"]
            == rec_outputs["parts"][0]["functionResponse"]["name"]
        )
        assert response["functionResponse"]["response"] == {"output": "Mexico"}
        assert "id" not in response["functionResponse"]
        assert len(sent2["contents"]) == len(recorded["contents"])
        declaration = sent2["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == recorded["tools"][0]["functionDeclarations"][0]["name"]
        assert declaration["parameters_json_schema"]["type"] == "object"


def _urlsafe(signature: str) -> str:
    return base64.urlsafe_b64encode(base64.b64decode(signature)).decode()


def test_request_body_groups_turns() -> None:
    records = [
        record(RecordType.SYSTEM_PROMPT, "Be brief."),
        record(RecordType.PROMPT, "Weather in Paris and Rome?"),
        record(
            RecordType.MODEL_RESP,
            "Let me check.",
            metadata={
                "gemini_thought_signature": SIG2,
                # Another provider's extras: ignored.
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "x", "signature": "anthropic"}
                ],
                "openai_item_id": "rs_1",
            },
        ),
        record(
            RecordType.TOOL_CALL,
            '{"city": "Paris"}',
            tool_call_id="id-paris",
            tool_name="weather",
            metadata={"thought_signature": SIG},
        ),
        record(
            RecordType.TOOL_CALL, '{"city": "Rome"}', tool_call_id="id-rome", tool_name="weather"
        ),
        record(RecordType.TOOL_OUTPUT, "sunny", tool_call_id="id-paris", tool_name="weather"),
        record(RecordType.TOOL_OUTPUT, "rainy", tool_call_id="id-rome", tool_name="weather"),
        record(RecordType.MODEL_RESP, "Paris is sunny, Rome rainy."),
        record(RecordType.PROMPT, "Thanks"),
    ]
    tool = Tool("weather", "Current weather").string("city", "City name")
    headers = []
    for wire in WIRES:
        replay = Replay(sse(event({"text": "ok"}, finish="STOP")))
        m = model(replay, wire, temperature=0.25, max_tokens=100)
        reply = reply_from_chunks(
            m.iter_chunks(Request(records, tools=[tool], options={"top_k": 3}))
        )
        assert reply.text == "ok"
        (body,) = replay.bodies
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}], "role": "user"}
        assert body["contents"] == [
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me check.", "thoughtSignature": _urlsafe(SIG2)},
                    {
                        "functionCall": {
                            "id": "id-paris",
                            "name": "weather",
                            "args": {"city": "Paris"},
                        },
                        "thoughtSignature": _urlsafe(SIG),
                    },
                    {
                        "functionCall": {
                            "id": "id-rome",
                            "name": "weather",
                            "args": {"city": "Rome"},
                        }
                    },
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "id": "id-paris",
                            "name": "weather",
                            "response": {"output": "sunny"},
                        }
                    },
                    {
                        "functionResponse": {
                            "id": "id-rome",
                            "name": "weather",
                            "response": {"output": "rainy"},
                        }
                    },
                ],
            },
            {"role": "model", "parts": [{"text": "Paris is sunny, Rome rainy."}]},
            {"role": "user", "parts": [{"text": "Thanks"}]},
        ]
        assert body["tools"] == [
            {
                "functionDeclarations": [
                    {
                        "name": "weather",
                        "description": "Current weather",
                        # The SDK sends this key unconverted (as in the recordings).
                        "parameters_json_schema": tool.parameters(),
                    }
                ]
            }
        ]
        assert body["generationConfig"] == {"temperature": 0.25, "maxOutputTokens": 100, "topK": 3}
        sent = replay.requests[0]
        assert sent.url.path == "/v1/models/gemini-test:streamGenerateContent"
        assert sent.url.params["alt"] == "sse"
        assert sent.headers["x-goog-api-key"] == KEY
        headers.append({k: v for k, v in sent.headers.items() if k != "content-length"})
        assert "automaticFunctionCalling" not in json.dumps(body)
    assert headers[0] == headers[1]  # both wire paths send the same request


def test_max_output_tokens_and_options_override_params() -> None:
    replay = Replay(sse(event(finish="STOP")))
    m = model(replay, temperature=0.1, max_output_tokens=50)
    list(m.iter_chunks(Request(HI.records, max_output_tokens=10, options={"temperature": 0.9})))
    assert replay.bodies[0]["generationConfig"] == {"temperature": 0.9, "maxOutputTokens": 10}


def test_tool_call_without_model_reply_and_bad_stored_values() -> None:
    contents = build_contents(
        [
            record(RecordType.PROMPT, "go"),
            record(
                RecordType.TOOL_CALL,
                '{"cut": ',  # arguments of a cut stream
                tool_call_id="c1",
                tool_name="f",
                metadata={"thought_signature": "not base64!!", "gemini_synthetic_id": True},
            ),
            record(RecordType.TOOL_OUTPUT, "done", tool_call_id="c1", tool_name="f"),
            record(RecordType.MODEL_RESP, ""),  # an empty reply makes no content
        ]
    )
    assert [c.role for c in contents] == ["user", "model", "user"]
    (call,) = contents[1].parts or []
    assert call.function_call is not None
    assert (call.function_call.id, call.function_call.args, call.thought_signature) == (
        None,
        {},
        None,
    )


# -- a history that opens with a reply ----------------------------------------------------
# Gemini refuses contents whose first turn is the model's ("Please ensure that function
# call turn comes immediately after a user turn or after a function response turn";
# "... multiturn requests alternate between user and model"): a history whose first
# prompt was killed is sent from its first prompt on; the records stay as they are.


def test_a_history_opening_with_a_reply_is_sent_from_its_first_prompt() -> None:
    records = [
        record(RecordType.SYSTEM_PROMPT, "Be brief."),
        record(RecordType.MODEL_RESP, "Checking.", metadata={"gemini_thought_signature": SIG}),
        record(RecordType.TOOL_CALL, '{"city": "Paris"}', tool_call_id="c1", tool_name="weather"),
        record(RecordType.TOOL_OUTPUT, "sunny", tool_call_id="c1", tool_name="weather"),
        record(RecordType.MODEL_RESP, "Paris is sunny."),
        record(RecordType.SYSTEM_PROMPT, "Use metric units."),
        record(RecordType.PROMPT, "And Rome?"),
        record(RecordType.MODEL_RESP, "Rainy."),
        record(RecordType.PROMPT, "Thanks"),
    ]
    want = [
        {"parts": [{"text": "And Rome?"}], "role": "user"},
        {"parts": [{"text": "Rainy."}], "role": "model"},
        {"parts": [{"text": "Thanks"}], "role": "user"},
    ]
    contents = build_contents(records)
    assert [(c.role, [p.text for p in c.parts or []]) for c in contents] == [
        (w["role"], [p["text"] for p in w["parts"]]) for w in want
    ]
    for wire in WIRES:
        for collect in (collect_sync, collect_async):
            replay = Replay(sse(event({"text": "ok"}, finish="STOP")))
            _, error = collect(model(replay, wire), Request(records))
            assert error is None, f"{wire} {collect.__name__}: {error!r}"
            body = replay.bodies[0]
            assert body["contents"] == want
            assert body["systemInstruction"]["parts"] == [
                {"text": "Be brief.\n\nUse metric units."}
            ]


@pytest.mark.parametrize("wire", WIRES)
def test_killing_the_first_prompt_sends_the_rest_from_the_next_prompt(wire: str) -> None:
    ok = sse(event({"text": "ok"}, finish="STOP"))
    replay = Replay(ok, ok, ok)
    cw = ContextWindow(rxcontext.open(":memory:"), model(replay, wire), "kill", retry=None)
    cw.set_system_prompt("sys")
    cw.add_prompt("hello")
    cw.call()
    cw.add_prompt("q2")
    cw.call()
    assert cw.set_record_live_state(1, 1, False) == 1  # the first prompt
    cw.add_prompt("next?")
    cw.call()
    assert replay.bodies[2]["contents"] == [
        {"parts": [{"text": "q2"}], "role": "user"},
        {"parts": [{"text": "ok"}], "role": "model"},
        {"parts": [{"text": "next?"}], "role": "user"},
    ]
    assert [r.type for r in cw.live_records()][:2] == [
        RecordType.SYSTEM_PROMPT,
        RecordType.MODEL_RESP,
    ]


# -- clients ----------------------------------------------------------------------------------


def test_name_and_wire_check() -> None:
    assert (
        GeminiModel("gemini-2.5-flash", client=client(Replay())).name == "gemini:gemini-2.5-flash"
    )
    assert GeminiModel("m", client=client(Replay())).wire == "fast"
    assert GeminiModel("m", client=client(Replay()), wire="sdk").wire == "sdk"
    with pytest.raises(ValueError, match="wire"):
        GeminiModel("m", wire="grpc")  # type: ignore[arg-type]


def test_clients_are_built_lazily_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
    replay = Replay(sse(event({"text": "async only"}, finish="STOP")))
    m = GeminiModel("gemini-test", async_client=client(replay))
    chunks, error = collect_async(m, HI)
    assert error is None and reply_from_chunks(chunks).text == "async only"
    with pytest.raises(ProviderError, match="GEMINI_API_KEY") as info:
        m.iter_chunks(HI)
    assert info.value.error_type == "configuration"

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    built = GeminiModel("gemini-test")
    assert built._client.get().models is not None
    # The .aio of a given genai.Client serves the async path.
    replay2 = Replay(sse(event({"text": "via aio"}, finish="STOP")))
    m2 = GeminiModel("gemini-test", async_client=client(replay2).aio)
    assert reply_from_chunks(collect_async(m2, HI)[0]).text == "via aio"


def test_reply_values_are_plain() -> None:
    reply = reply_from_chunks(
        play(sse(event({"text": "x", "thoughtSignature": SIG}, finish="STOP")))
    )
    assert isinstance(reply, Reply)
    json.dumps(dict(reply.metadata))  # storable as JSON


# -- a malformed event mid-stream: the reply is interrupted, never stored as complete ---------


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("frame", [b'["lost text"]', b'"lost text"', b"null", b"{}"])
def test_non_object_event_interrupts_the_reply_instead_of_dropping_it(
    wire: str, frame: bytes
) -> None:
    """A non-object event used to be skipped and the reply stored as complete without it."""
    body = sse(event({"text": "Kept"})) + b"data: " + frame + b"\n\n"
    body += sse(event({"text": " after"}, finish="STOP"))
    cw = ContextWindow(rxcontext.open(":memory:"), model(Replay(body), wire), "g", retry=None)
    cw.add_prompt("hi")
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    cause = info.value.__cause__
    assert isinstance(cause, ProviderError) and cause.error_type == "invalid_event"
    assert info.value.checkpoint.text == "Kept"
    assert [r.type for r in cw.live_records()] == [RecordType.PROMPT]


# -- the spliced client -----------------------------------------------------------------


def test_the_spliced_client_holds_what_the_sdks_stream_reads_per_event() -> None:
    """The SDK's stream reads ``vertexai`` and ``_verify_response`` on its api client for
    every event: the stand-in holds the real client's own (read through ``__getattr__``,
    each read failed first, ~19,000 instructions an event)."""
    sdk = client(Replay(b""))
    real = sdk._api_client
    stand_in = spliced_client(sdk, [b"{}"])._api_client
    assert vars(stand_in)["vertexai"] is real.vertexai
    assert vars(stand_in)["_verify_response"] == real._verify_response
