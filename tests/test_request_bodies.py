"""Request bodies with a spliced history are byte for byte what the SDK itself sends.

Every provider model encodes each record's part of the request once and splices the history
into the body its SDK builds for the rest (providers/_history.py). The SDK's own request
building is the reference: for the OpenAI and Anthropic SDKs a client subclass, which the
models never splice for (Azure, Bedrock and Vertex subclasses rewrite bodies), so the model
hands the SDK its messages as dicts; for Gemini the SDK's own ``generate_content_stream`` /
``generate_content`` with ``build_contents``. Both requests go through the real SDK to an
httpx2 transport that records them (method, URL, headers, body bytes) and answers with an
error, whose handling must also match. Histories are generated: prompts, replies, tool calls
and outputs in any order, failed tool outputs, system prompts anywhere, unicode, thinking
blocks with signatures, Gemini thought signatures, Responses output items, reasoning from
``reasoning_content``, cut tool arguments, missing ids.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types
from replay import NO_SSL

from rxcontext.errors import ProviderError
from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel
from rxcontext.providers._history import HistoryCache
from rxcontext.providers.anthropic import build_messages
from rxcontext.providers.base import Request
from rxcontext.providers.gemini import build_contents
from rxcontext.providers.openai import OUTPUT_KEY, REASONING_FIELD
from rxcontext.records import Record, RecordType
from rxcontext.tools import Tool

R = RecordType
MODES = ("sync", "async")
WIRES = ("fast", "sdk")
PROVIDERS = ("openai_chat", "openai_responses", "anthropic", "gemini")


# -- a transport that records requests and refuses them ------------------------------------


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Recorder:
    """Records every request; answers each with HTTP 400 and a provider-shaped error body."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.transport = httpx2.MockTransport(self._handle)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(
            Sent(
                request.method,
                str(request.url),
                tuple((k.lower(), v) for k, v in request.headers.multi_items()),
                request.read(),
            )
        )
        error = {"type": "invalid_request_error", "message": "refused by the test", "code": 400}
        body = {"type": "error", "error": error, "status": "INVALID_ARGUMENT"}
        return httpx2.Response(400, json=body)


# -- clients ---------------------------------------------------------------------------------


# Subclasses, which the models send messages as dicts, through the SDK's own request building.
# Named as the SDK's classes: the User-Agent header carries the class name.
PlainOpenAI = type("OpenAI", (openai.OpenAI,), {})
PlainAsyncOpenAI = type("AsyncOpenAI", (openai.AsyncOpenAI,), {})
PlainAnthropic = type("Anthropic", (anthropic.Anthropic,), {})
PlainAsyncAnthropic = type("AsyncAnthropic", (anthropic.AsyncAnthropic,), {})


KEYS = {"openai": "sk-test-bodies-0123456789", "anthropic": "sk-ant-test-bodies-0123456789"}


def make_model(provider: str, wire: str, recorder: Recorder, plain: bool, **params: Any) -> Any:
    http, ahttp = (
        httpx2.Client(transport=recorder.transport),
        httpx2.AsyncClient(transport=recorder.transport),
    )
    if provider.startswith("openai"):
        sync_cls, async_cls = (
            (PlainOpenAI, PlainAsyncOpenAI)
            if plain
            else (
                openai.OpenAI,
                openai.AsyncOpenAI,
            )
        )
        common = {"api_key": KEYS["openai"], "max_retries": 0, "base_url": "http://x.invalid/v1"}
        cls = OpenAIModel if provider == "openai_chat" else OpenAIResponsesModel
        return cls(
            "gpt-test",
            client=sync_cls(http_client=http, **common),
            async_client=async_cls(http_client=ahttp, **common),
            wire=wire,  # type: ignore[arg-type]
            **params,
        )
    if provider == "anthropic":
        sync_a, async_a = (
            (PlainAnthropic, PlainAsyncAnthropic)
            if plain
            else (
                anthropic.Anthropic,
                anthropic.AsyncAnthropic,
            )
        )
        common = {"api_key": KEYS["anthropic"], "max_retries": 0}
        return AnthropicModel(
            "claude-test",
            client=sync_a(http_client=http, **common),
            async_client=async_a(http_client=ahttp, **common),
            wire=wire,  # type: ignore[arg-type]
            **params,
        )
    return GeminiModel("gemini-test", client=gemini_client(recorder), wire=wire, **params)  # type: ignore[arg-type]


def gemini_client(recorder: Recorder) -> genai.Client:
    options = types.HttpOptions(
        httpx_client=httpx2.Client(transport=recorder.transport, verify=NO_SSL),
        httpx_async_client=httpx2.AsyncClient(transport=recorder.transport, verify=NO_SSL),
        async_client_args={"ssl": NO_SSL},
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key="AIzaTESTbodies-0123456789abcdef", http_options=options)


# -- generated histories ---------------------------------------------------------------------

_ids = itertools.count(1)
_TEXTS = [
    "",
    "\n\n",  # whitespace only: Anthropic refuses it as a text block
    "Hello",
    "naïve café — “quotes” and 'apostrophes'",
    "日本語のテキスト、中文，한국어",
    "emoji 🎉👩‍👩‍👧 and flags 🇫🇷",
    "right-to-left: שלום עולם مرحبا",
    'json-ish {"a": [1, 2]} and \\backslashes\\ and "quotes"',
    "control \x00\x01\x1f and line\u2028separators\u2029 tab\tnewline\n",
    "combining e\u0301 and zero\u200bwidth",
    "x" * 300,
]
_SIGS = [
    base64.b64encode(b"\x12\x34opaque-signature\xff\xfe").decode(),
    base64.b64encode(bytes(range(256))).decode(),
    "not base64!!",
    "",
]
_ARGS = [
    '{"city": "Paris"}',
    '{"n": 1, "f": 2.5, "big": 123456789012345678901234567890, "neg": -0.0, "exp": 1e-7}',
    '{"nested": {"list": [1, "two", null, true, {"deep": []}]}, "unicode": "ü🎉"}',
    "",
    '{"cut": ',
    "[1, 2]",
    '"a string"',
    "{}",
]


def _text(rng: random.Random) -> str:
    return rng.choice(_TEXTS) + (str(rng.randrange(1000)) if rng.random() < 0.5 else "")


def _reply_metadata(rng: random.Random, calls: list[tuple[str | None, str]]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if rng.random() < 0.4:
        blocks: list[Any] = [
            {"type": "thinking", "thinking": _text(rng), "signature": rng.choice(_SIGS[:2])}
        ]
        if rng.random() < 0.3:
            blocks.append({"type": "redacted_thinking", "data": "opaque=="})
        if rng.random() < 0.2:
            blocks.append({"type": "something_else", "x": 1})
        metadata["thinking_blocks"] = blocks
    if rng.random() < 0.4:
        metadata["gemini_thought_signature"] = rng.choice(_SIGS)
    if rng.random() < 0.4:
        items: list[dict[str, Any]] = []
        if rng.random() < 0.7:
            reasoning: dict[str, Any] = {
                "type": "reasoning",
                "id": f"rs_{rng.randrange(99)}",
                "summary": [{"type": "summary_text", "text": _text(rng)}],
            }
            if rng.random() < 0.5:
                reasoning["encrypted_content"] = "gAAAA" + "x" * rng.randrange(40)
            if rng.random() < 0.3:
                reasoning["content"] = [{"type": "reasoning_text", "text": _text(rng)}]
            items.append(reasoning)
        if rng.random() < 0.8:
            item = {"type": "message", "id": f"msg_{rng.randrange(99)}", "text": "?"}
            if rng.random() < 0.5:
                item["phase"] = rng.choice(["final_answer", "commentary"])
            items.append(item)
        for call_id, _ in calls:
            items.append({"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id})
        metadata[OUTPUT_KEY] = items
    if rng.random() < 0.3:
        metadata["thinking"] = _text(rng)
        if rng.random() < 0.7:
            metadata[REASONING_FIELD] = rng.choice(["reasoning_content", "reasoning_content", "x"])
    if rng.random() < 0.1:
        metadata["other_provider_key"] = {"ignored": True}
    return metadata


def history(seed: int, context: str = "ctx") -> list[Record]:
    """A random history: turns of prompts, replies (with calls and outputs), system prompts."""
    rng = random.Random(seed)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[Record] = []

    def add(kind: RecordType, content: str, **fields: Any) -> None:
        out.append(Record(next(_ids), context, kind, content, True, 1, now, **fields))

    if rng.random() < 0.7:
        add(R.SYSTEM_PROMPT, _text(rng))
    for _ in range(rng.randrange(0, 12)):
        roll = rng.random()
        if roll < 0.08:
            add(R.SYSTEM_PROMPT, _text(rng))
        elif roll < 0.12:
            # Out of the usual order: an output, a call, or a reply with no prompt before it.
            add(rng.choice([R.TOOL_OUTPUT, R.TOOL_CALL, R.MODEL_RESP]), _text(rng))
            continue
        add(R.PROMPT, _text(rng))
        calls = [
            (None if rng.random() < 0.05 else f"call_{next(_ids)}", rng.choice(["f", "weather"]))
            for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3]))
        ]
        reply = _text(rng)
        if rng.random() < 0.9:
            add(R.MODEL_RESP, reply, metadata=_reply_metadata(rng, calls))
            if OUTPUT_KEY in out[-1].metadata:
                for item in out[-1].metadata[OUTPUT_KEY]:
                    if item["type"] == "message":
                        item["text"] = reply if rng.random() < 0.8 else "stale"
        for call_id, name in calls:
            metadata: dict[str, Any] = {}
            if rng.random() < 0.3:
                metadata["thought_signature"] = rng.choice(_SIGS)
            if rng.random() < 0.2:
                metadata["gemini_synthetic_id"] = True
            add(
                R.TOOL_CALL,
                rng.choice(_ARGS),
                tool_call_id=call_id,
                tool_name=None if rng.random() < 0.05 else name,
                metadata=metadata,
            )
        for call_id, name in calls:
            # Some failed (their tool raised, or the call was interrupted).
            failed = rng.choice([{}, {}, {}, {"error": True}, {"interrupted": True}])
            add(R.TOOL_OUTPUT, _text(rng), tool_call_id=call_id, tool_name=name, metadata=failed)
        if calls and rng.random() < 0.7:
            add(R.MODEL_RESP, _text(rng), metadata=_reply_metadata(rng, []))
    return out


WEATHER = Tool("weather", "Current weather").string("city", "City name")


def request_for(provider: str, records: list[Record], seed: int) -> Request:
    rng = random.Random(seed)
    options: dict[str, Any] = {}
    if rng.random() < 0.3:
        options["temperature"] = rng.choice([0, 0.5, 1])
    return Request(
        records,
        tools=[WEATHER] if rng.random() < 0.5 else [],
        max_output_tokens=rng.choice([None, 100]),
        options=options,
        previous_response_id=(
            "resp_prev" if provider == "openai_responses" and rng.random() < 0.3 else None
        ),
    )


# -- running one call and comparing -----------------------------------------------------------


def run(model: Any, request: Request, mode: str, call: str) -> BaseException | None:
    """One streaming (``call="stream"``) or non-streaming call; the exception it ended with."""

    async def arun() -> None:
        if call == "stream":
            async for _ in model.aiter_chunks(request):
                pass
        else:
            await model.acomplete(request)

    try:
        if mode == "async":
            asyncio.run(arun())
        elif call == "stream":
            for _ in model.iter_chunks(request):
                pass
        else:
            model.complete(request)
    except Exception as exc:
        return exc
    return None


def gemini_reference(
    client: genai.Client, model: GeminiModel, request: Request, mode: str, call: str
) -> BaseException | None:
    """The SDK's own call with ``build_contents`` and the model's config."""
    contents = build_contents(request.records)
    config = model.request_config(request)
    kwargs: dict[str, Any] = {"model": model.model_name, "contents": contents, "config": config}

    async def arun() -> None:
        if call == "stream":
            async for _ in await client.aio.models.generate_content_stream(**kwargs):
                pass
        else:
            await client.aio.models.generate_content(**kwargs)

    try:
        if mode == "async":
            asyncio.run(arun())
        elif call == "stream":
            for _ in client.models.generate_content_stream(**kwargs):
                pass
        else:
            client.models.generate_content(**kwargs)
    except Exception as exc:
        return exc
    return None


def same_failure(got: BaseException | None, want: BaseException | None) -> None:
    """Both calls failed alike: the same error, and the same SDK exception underneath (the
    Gemini reference calls the SDK directly: its exception is what the model's wraps)."""
    if isinstance(got, ProviderError) and not isinstance(want, ProviderError):
        got = got.__cause__
    assert type(got) is type(want)
    assert str(got) == str(want)
    if isinstance(want, ProviderError):
        assert type(got.__cause__) is type(want.__cause__)


def compare(
    provider: str,
    wire: str,
    mode: str,
    requests: list[Request],
    call: str = "stream",
    **params: Any,
) -> None:
    """Each request through one spliced model (its cache warm from the requests before) and
    through the reference path: the same request bytes and the same failure, every time."""
    spliced_rec, reference_rec = Recorder(), Recorder()
    spliced = make_model(provider, wire, spliced_rec, plain=False, **params)
    plain = (
        None if provider == "gemini" else make_model(provider, wire, reference_rec, True, **params)
    )
    reference = gemini_client(reference_rec)
    for request in requests:
        got = run(spliced, request, mode, call)
        if plain is None:
            want = gemini_reference(reference, spliced, request, mode, call)
        else:
            want = run(plain, request, mode, call)
        same_failure(got, want)
    assert len(spliced_rec.sent) == len(reference_rec.sent)
    for got_sent, want_sent in zip(spliced_rec.sent, reference_rec.sent, strict=True):
        assert got_sent.body == want_sent.body
        assert got_sent == want_sent


def growing(provider: str, seed: int) -> list[Request]:
    """Requests of one conversation as it grows, as the window sends them."""
    records = history(seed)
    cuts = sorted({len(records), *random.Random(seed).choices(range(len(records) + 1), k=3)})
    return [request_for(provider, records[:cut], seed + cut) for cut in cuts if cut]


# -- the tests -------------------------------------------------------------------------------

# Seeds of generated histories per test; the default keeps the suite in its time budget,
# RXCONTEXT_BODY_SEEDS=100 (say) runs a longer differential sweep.
SEEDS = int(os.environ.get("RXCONTEXT_BODY_SEEDS", "5"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_generated_histories_send_the_sdks_bytes(provider: str, wire: str, mode: str) -> None:
    for seed in range(SEEDS):
        compare(provider, wire, mode, growing(provider, seed))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_conversation_growing_record_by_record_sends_the_sdks_bytes(provider: str) -> None:
    """Each request resumes the previous one's assembly where it can be continued (a turn
    whose calls arrive later, messages of one role that merge, outputs of calls with made-up
    ids, leading system prompts): every prefix of a conversation, in order, one model."""
    for seed in range(300, 300 + max(1, SEEDS // 3)):
        records = history(seed)
        requests = [request_for(provider, records[:n], seed) for n in range(1, len(records) + 1)]
        compare(provider, "fast", "sync", requests)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_records_list_extended_in_place_sends_the_sdks_bytes(provider: str) -> None:
    """The caller may extend the list it sent (a history kept in a list): what a request
    kept of it must not change with it."""
    records = history(31)
    spliced, reference = Recorder(), Recorder()
    model = make_model(provider, "fast", spliced, plain=False)
    plain = make_model(provider, "fast", reference, plain=True) if provider != "gemini" else None
    reference_client = gemini_client(reference)
    sent: list[Record] = []
    for record in records:
        sent.append(record)  # the same list object every time
        request = Request(sent)
        got = run(model, request, "sync", "stream")
        if plain is None:
            want = gemini_reference(reference_client, model, request, "sync", "stream")
        else:
            want = run(plain, request, "sync", "stream")
        same_failure(got, want)
    assert [s.body for s in spliced.sent] == [s.body for s in reference.sent]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_non_streaming_calls_send_the_sdks_bytes(provider: str, mode: str) -> None:
    for seed in range(100, 100 + max(1, SEEDS // 2)):
        compare(provider, "sdk", mode, growing(provider, seed), call="complete")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_long_history_sends_the_sdks_bytes(provider: str) -> None:
    records = [r for seed in range(200, 260) for r in history(seed)]
    compare(provider, "fast", "sync", [request_for(provider, records, 1)])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_changed_records_are_encoded_again(provider: str) -> None:
    """A kept encoding is used only while the record is unchanged: a record whose id comes
    back with other content (SQLite reuses the highest rowid after a delete), metadata, or
    tool fields, records never stored (id -1), and records of other contexts under the same
    ids all send what the SDK would send for them."""
    records = history(7)
    while len(records) < 6:
        records += history(len(records) + 8)
    changed = list(records)
    for i, record in enumerate(changed):
        if record.type is R.MODEL_RESP:
            changed[i] = replace(record, content=record.content + " (edited)", metadata={})
        elif record.type is R.TOOL_CALL:
            changed[i] = replace(record, tool_name="renamed", content='{"other": 1}')
        elif record.type is R.PROMPT:
            changed[i] = replace(record, type=R.SYSTEM_PROMPT)
    unsaved = [
        *records,
        Record.unsaved("ctx", R.MODEL_RESP, "partial"),
        Record.unsaved("ctx", R.PROMPT, "Continue."),
    ]
    other = [replace(r, context_id="other") for r in changed]
    # The last record replaced by one that joins the turn (message, content) before it.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    turn = [
        Record(next(_ids), "turn", R.PROMPT, "weather?", True, 1, now),
        Record(
            next(_ids),
            "turn",
            R.MODEL_RESP,
            "checking",
            True,
            1,
            now,
            metadata={
                OUTPUT_KEY: [
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                    {"type": "message", "id": "msg_1", "text": "checking"},
                    {"type": "function_call", "id": "fc_1", "call_id": "c"},
                ]
            },
        ),
    ]
    asked = [*turn, Record(next(_ids), "turn", R.PROMPT, "and?", True, 1, now)]
    called = [
        *turn,
        Record(
            next(_ids), "turn", R.TOOL_CALL, "{}", True, 1, now, tool_call_id="c", tool_name="f"
        ),
        Record(
            next(_ids), "turn", R.TOOL_OUTPUT, "ok", True, 1, now, tool_call_id="c", tool_name="f"
        ),
    ]
    sequence = [
        records,
        changed,
        records,
        unsaved,
        unsaved[:-1],
        other,
        records,
        records[:3],
        asked,
        called,
        asked,
    ]
    compare(provider, "fast", "sync", [request_for(provider, rs, 3) for rs in sequence])


@pytest.mark.parametrize("provider", ["openai_chat", "openai_responses", "anthropic"])
def test_params_and_extra_body_go_where_the_sdk_puts_them(provider: str) -> None:
    """Model params, request options and ``extra_body`` (even one that replaces the
    history) reach the body as the SDK merges them."""
    key = {"openai_chat": "messages", "openai_responses": "input"}.get(provider, "messages")
    records = history(11)
    requests = [
        request_for(provider, records, 1),
        Request(records, options={"extra_body": {"custom": [1, "two"], "metadata": {"a": "b"}}}),
        Request(records, options={"extra_body": {key: [{"role": "user", "content": "x"}]}}),
        Request(records, options={"extra_headers": {"x-test": "1"}, "timeout": 5.0}),
    ]
    compare(provider, "fast", "sync", requests, temperature=0.25, extra_body={"seed": 7})


def test_gemini_config_and_extra_body_go_where_the_sdk_puts_them() -> None:
    records = history(12)
    extra = {"extra_body": {"safetySettings": [], "labels": {"a": "b"}}}
    replaced = {"extra_body": {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}}
    requests = [
        request_for("gemini", records, 1),
        Request(records, options={"http_options": extra, "top_k": 3}),
        Request(records, options={"http_options": replaced}),
    ]
    compare("gemini", "fast", "sync", requests, temperature=0.25, max_tokens=99)
    compare("gemini", "sdk", "async", requests, temperature=0.25)


@pytest.mark.parametrize("provider", ["openai_chat", "openai_responses", "anthropic"])
def test_an_empty_history_sends_the_sdks_bytes(provider: str) -> None:
    compare(provider, "fast", "sync", [Request([]), Request(history(5)[:1])])


def test_gemini_without_contents_fails_as_the_sdk_does() -> None:
    """Only system prompts: the SDK refuses to send no contents, on both paths."""
    records = [r for r in history(3) if r.type is R.SYSTEM_PROMPT][:1] or [
        Record(1, "ctx", R.SYSTEM_PROMPT, "Be brief.", True, 1, datetime.now(UTC))
    ]
    recorder = Recorder()
    model = make_model("gemini", "fast", recorder, plain=False)
    got = run(model, Request(records), "sync", "stream")
    want = gemini_reference(gemini_client(Recorder()), model, Request(records), "sync", "stream")
    same_failure(got, want)
    assert isinstance(want, ValueError)
    assert recorder.sent == []


def test_anthropic_middleware_sees_the_body() -> None:
    """A client with middleware gets the messages as dicts: middleware may read the body."""
    seen: list[Any] = []

    def middleware(request: Any, call_next: Callable[[Any], Any]) -> Any:
        seen.append(request.json)
        return call_next(request)

    recorder = Recorder()
    client = anthropic.Anthropic(
        api_key=KEYS["anthropic"],
        max_retries=0,
        http_client=httpx2.Client(transport=recorder.transport),
        middleware=[middleware],
    )
    model = AnthropicModel("claude-test", client=client, cache=False)
    records = history(21)
    run(model, Request(records), "sync", "stream")
    assert len(recorder.sent) == 1
    assert seen[0]["messages"] == build_messages(records)[1]
    assert json.loads(recorder.sent[0].body)["messages"] == seen[0]["messages"]


def test_the_cache_keeps_the_latest_requests_within_its_bound() -> None:
    """Only each context's latest request is kept, and only as many records as the bound
    allows over all contexts (least recently used contexts go first)."""
    encoded: list[int] = []

    def encode(record: Record) -> int:
        encoded.append(record.id)
        return record.id

    cache = HistoryCache(encode, max_records=10)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a = [Record(i, "a", R.PROMPT, f"a{i}", True, 1, now) for i in range(1, 7)]
    b = [Record(i, "b", R.PROMPT, f"b{i}", True, 1, now) for i in range(1, 7)]
    assert cache.entries(a) == [1, 2, 3, 4, 5, 6] and len(encoded) == 6
    assert cache.entries(a[:3] + a[4:]) == [1, 2, 3, 5, 6] and len(encoded) == 6
    assert len(cache) == 5  # the dropped record is no longer kept
    cache.entries(b)
    assert len(encoded) == 12 and len(cache) == 6  # 11 > 10: context "a" went
    cache.entries(a)
    assert len(encoded) == 18
    cache.entries([replace(r, content=r.content + "!") for r in a])
    assert len(encoded) == 24  # changed content: encoded again
    cache.clear()
    assert len(cache) == 0


class ThreadRecorder(Recorder):
    """A :class:`Recorder` that also files each request's body under the calling thread."""

    def __init__(self) -> None:
        super().__init__()
        self.by_thread: dict[int, list[bytes]] = {}

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        self.by_thread.setdefault(threading.get_ident(), []).append(request.read())
        return super()._handle(request)


def _requests(
    model: Any, records: list[Record], barrier: threading.Barrier, plan: list[int]
) -> list[BaseException]:
    failures: list[BaseException] = []
    try:
        barrier.wait(timeout=30)
        for cut in plan:
            run(model, Request(records[:cut]), "sync", "stream")
    except BaseException as exc:  # reported by the test
        failures.append(exc)
    return failures


@pytest.mark.parametrize("provider", PROVIDERS)
def test_threads_sharing_a_model_and_a_context_send_the_sdks_bytes(provider: str) -> None:
    """Requests of one context from several threads at once, each a different prefix of the
    conversation (so each keeps and resumes from what another left): every body is the
    SDK's for its own records. Many bounded trials."""
    records = [r for seed in range(400, 406) for r in history(seed)]
    first = next(i for i, r in enumerate(records) if r.type is R.PROMPT)
    cuts = list(range(first + 1, len(records) + 1))  # each with contents (Gemini needs one)
    want: dict[int, bytes] = {}
    reference = Recorder()
    plain = None if provider == "gemini" else make_model(provider, "fast", reference, plain=True)
    reference_client = gemini_client(reference)
    for trial in range(max(1, SEEDS // 4)):
        recorder = ThreadRecorder()
        model = make_model(provider, "fast", recorder, plain=False)
        plans = [random.Random(trial * 10 + t).choices(cuts, k=12) for t in range(4)]
        barrier = threading.Barrier(len(plans))
        with ThreadPoolExecutor(len(plans)) as pool:
            results = list(pool.map(partial(_requests, model, records, barrier), plans))
        assert results == [[]] * len(plans)
        for plan in plans:
            for cut in plan:
                if cut not in want:
                    request = Request(records[:cut])
                    if plain is None:
                        gemini_reference(reference_client, model, request, "sync", "stream")
                    else:
                        run(plain, request, "sync", "stream")
                    want[cut] = reference.sent[-1].body
        # Each thread's bodies, in its order, are the SDK's for its plan's records.
        expected = sorted([want[cut] for cut in plan] for plan in plans)
        assert sorted(recorder.by_thread.values()) == expected


def test_anthropic_omitted_values_are_dropped_as_the_sdk_drops_them() -> None:
    """``omit`` / ``NOT_GIVEN`` as a keyword's value, in ``extra_body`` over a body key and
    inside a nested value: the spliced body leaves out what the SDK's own leaves out."""
    records = history(13)
    requests = [
        Request(records, options={"metadata": anthropic.omit, "top_k": anthropic.NOT_GIVEN}),
        Request(records, options={"extra_body": {"max_tokens": anthropic.omit, "custom": 1}}),
        Request(records, options={"extra_body": {"custom": {"a": anthropic.omit, "b": 2}}}),
    ]
    for mode in MODES:
        compare("anthropic", "fast", mode, requests, temperature=anthropic.omit)


@pytest.mark.parametrize("provider", ["openai_chat", "openai_responses", "anthropic"])
def test_not_given_in_extra_body_is_stripped_as_the_sdk_strips_it(provider: str) -> None:
    """The SDKs strip ``NOT_GIVEN`` from ``extra_body``'s top level before they merge it, so
    one over a body key leaves the body's value in place (and one over a new key adds
    nothing): the spliced body must keep that value too."""
    sdk = anthropic if provider == "anthropic" else openai
    key = {"openai_chat": "messages", "openai_responses": "input"}.get(provider, "messages")
    records = history(9)
    requests = [
        Request(records, options={"extra_body": {"max_tokens": sdk.NOT_GIVEN}}),
        Request(records, options={"extra_body": {key: sdk.NOT_GIVEN, "custom": 1}}),
        Request(records, options={"extra_body": {"custom": sdk.NOT_GIVEN}}),
    ]
    for mode in MODES:
        compare(provider, "fast", mode, requests, max_tokens=64)
