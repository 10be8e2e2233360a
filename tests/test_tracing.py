"""OpenTelemetry spans of replies (GenAI semantic conventions), caught by the SDK's
in-memory exporter. The tool loop runs through the real OpenAI SDK on a recorded stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import openai
import pytest
from replay import Replay, real_fixture
from replay import Reply as ReplayReply
from stores import open_store

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, StreamInterrupted, Tool, Usage
from rxcontext.providers import AnthropicModel, OpenAIModel, ScriptedModel

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (rxcontext[test])")
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from rxcontext.tracing import Tracing

KEY = "sk-test-tracing-0123456789"
PROMPT = "What is 1231 * 2331?"


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def tool_loop(provider: TracerProvider, **tracing: Any) -> tuple[ContextWindow, Replay]:
    replay = Replay(
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.1.sse"),
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse"),
    )
    model = OpenAIModel(
        "gpt-4o-mini",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    cw = ContextWindow(
        rxcontext.open(":memory:"),
        model,
        context="maths",
        tracing=Tracing(provider, **tracing),
    )
    cw.add_tool(Tool("multiply", "Multiply.").number("a").number("b"), lambda a: "2869461")
    cw.add_prompt(PROMPT)
    return cw, replay


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_reply_is_one_chat_span_with_a_child_span_per_tool(spans: Any, mode: str) -> None:
    provider, exporter = spans
    cw, _ = tool_loop(provider)
    reply = cw.call(reply_id="r-1") if mode == "sync" else asyncio.run(cw.acall(reply_id="r-1"))
    assert reply.text
    got = by_name(exporter.get_finished_spans())
    assert set(got) == {"chat gpt-4o-mini", "execute_tool multiply"}
    chat, tool = got["chat gpt-4o-mini"], got["execute_tool multiply"]
    assert chat.kind is SpanKind.CLIENT
    attrs = dict(chat.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["rxcontext.reply.id"] == "r-1"
    assert attrs["gen_ai.conversation.id"] == cw.context_id
    # Both rounds of the recorded loop: usage summed, each round's finish reason.
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (
        54 + 87,
        20 + 26,
    )
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("tool_calls", "stop")
    assert attrs["rxcontext.rounds"] == 2
    assert chat.status.status_code is StatusCode.UNSET
    # No text by default.
    assert not any(k.endswith("messages") for k in attrs)
    tool_attrs = dict(tool.attributes or {})
    assert tool.parent is not None and tool.parent.span_id == chat.context.span_id
    assert tool.context.trace_id == chat.context.trace_id
    assert tool_attrs["gen_ai.operation.name"] == "execute_tool"
    assert tool_attrs["gen_ai.tool.name"] == "multiply"
    assert tool_attrs["gen_ai.tool.call.id"] == reply_calls(cw)[0]
    assert "gen_ai.tool.call.arguments" not in tool_attrs
    assert chat.start_time <= tool.start_time and tool.end_time <= chat.end_time  # type: ignore[operator]


def reply_calls(cw: ContextWindow) -> list[str | None]:
    return [r.tool_call_id for r in cw.records() if r.tool_call_id and r.type.name == "TOOL_CALL"]


def test_content_is_recorded_only_when_asked(spans: Any) -> None:
    provider, exporter = spans
    cw, _ = tool_loop(provider, capture_content=True)
    reply = cw.call()
    got = by_name(exporter.get_finished_spans())
    attrs = dict(got["chat gpt-4o-mini"].attributes or {})
    inputs = json.loads(str(attrs["gen_ai.input.messages"]))
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    outputs = json.loads(str(attrs["gen_ai.output.messages"]))
    assert outputs[0]["parts"][0]["type"] == "tool_call"
    assert outputs[-1]["parts"] == [{"type": "text", "content": reply.text}]
    tool = dict(got["execute_tool multiply"].attributes or {})
    assert json.loads(str(tool["gen_ai.tool.call.arguments"])) == {"a": 1231, "b": 2331}
    assert tool["gen_ai.tool.call.result"] == "2869461"


@pytest.mark.usefixtures("both_stores")
def test_an_interrupted_reply_ends_its_span_in_error_with_the_checkpoint(spans: Any) -> None:
    provider, exporter = spans
    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "Rivers: "), ConnectionError("cut")]],
        name="anthropic:claude-sonnet-4-5",
    )
    cw = ContextWindow(open_store(), model, retry=None, tracing=Tracing(provider))
    cw.add_prompt("Name three rivers.")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call(reply_id="cut-1")
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert "ConnectionError: cut" in (span.status.description or "")
    assert attrs["error.type"] == "ConnectionError"
    assert attrs["rxcontext.checkpoint.id"] == cut.value.checkpoint.id
    assert attrs["rxcontext.reply.id"] == "cut-1"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    # Resumed, the same reply id has a second span, which ends well.
    model_two = ScriptedModel([[Chunk(ChunkKind.TEXT, "the Nile.")]], name=model.name)
    cw.model = model_two
    cw.resume_call(cut.value.checkpoint.id)
    second = exporter.get_finished_spans()[-1]
    assert dict(second.attributes or {})["rxcontext.reply.id"] == "cut-1"
    assert second.status.status_code is StatusCode.UNSET


def test_the_users_exception_reaches_the_user_and_the_span_still_ends(spans: Any) -> None:
    provider, exporter = spans
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "a"), Chunk(ChunkKind.TEXT, "b")]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, tracing=Tracing(provider))
    cw.add_prompt("go")
    broke = KeyError("ui broke")

    def on_next(chunk: Chunk) -> None:
        if chunk.text == "b":
            raise broke

    with pytest.raises(KeyError) as info:
        cw.stream().subscribe(on_next)
    assert info.value is broke
    (span,) = exporter.get_finished_spans()
    (cp,) = cw.checkpoints()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["rxcontext.checkpoint.id"] == cp.id


def test_cache_usage_and_a_failing_exporter_never_break_the_stream(spans: Any) -> None:
    provider, exporter = spans

    class Broken(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("exporter down")

    provider.add_span_processor(Broken())
    usage = Usage.of(1600, 20, cached_tokens=1200, cache_write_tokens=300, reasoning_tokens=5)
    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "ok"), Chunk(ChunkKind.USAGE, usage=usage)]],
        name="anthropic:claude-sonnet-4-5",
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, tracing=Tracing(provider))
    cw.add_prompt("go")
    assert cw.call().text == "ok"  # stored, whatever the exporter did
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 1200
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 300
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 5


@pytest.mark.parametrize(
    ("model_name", "provider_name"),
    [
        ("openai-responses:gpt-5-mini", "openai"),  # the Responses API is still OpenAI
        ("gemini:gemini-2.5-flash", "gcp.gemini"),
        ("ollama:llama3", "ollama"),  # a name the conventions do not list passes through
    ],
)
def test_provider_names_follow_the_conventions(
    spans: Any, model_name: str, provider_name: str
) -> None:
    provider, exporter = spans
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "ok")]], name=model_name)
    cw = ContextWindow(rxcontext.open(":memory:"), model, tracing=Tracing(provider))
    cw.add_prompt("hi")
    cw.call()
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == provider_name
    assert attrs["gen_ai.request.model"] == model_name.partition(":")[2]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_reply_taken_over_elsewhere_still_ends_its_span(spans: Any, mode: str) -> None:
    """The owner that lost its reply (another worker claimed it: its final write is
    fenced) ends the span in error all the same: no span is left open."""
    provider, exporter = spans

    class Takeover:
        """After the first chunk, another worker moves the reply to a new epoch."""

        name = "scripted"

        def __init__(self, store: Any) -> None:
            self.store = store

        def _taken(self) -> None:
            self.store._db().execute("UPDATE checkpoints SET epoch = epoch + 1")

        def iter_chunks(self, request: Any) -> Any:
            yield Chunk(ChunkKind.TEXT, "one ")
            self._taken()
            yield Chunk(ChunkKind.TEXT, "two")
            raise ConnectionError("cut")

        async def aiter_chunks(self, request: Any) -> Any:
            for chunk in self.iter_chunks(request):
                yield chunk

    store = rxcontext.open(":memory:")
    cw = ContextWindow(
        store, Takeover(store), retry=None, checkpoint_every=None, tracing=Tracing(provider)
    )
    cw.add_prompt("go")
    with pytest.raises(ConnectionError):  # nothing left to interrupt here: the error itself
        if mode == "sync":
            cw.call()
        else:
            asyncio.run(cw.acall())
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_an_asyncio_reply_span_is_a_child_of_the_callers_span(spans: Any) -> None:
    """As on the sync path: the reply's span starts in a worker thread, which must carry
    the caller's context (else every asyncio reply is a trace of its own)."""
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "hi")], [Chunk(ChunkKind.TEXT, "hi")]])
    cw = ContextWindow(open_store(), model, tracing=Tracing(provider))
    cw.add_prompt("hello")

    async def main() -> None:
        with tracer.start_as_current_span("outer"):
            await cw.acall()
            async for _ in cw.astream():
                pass

    asyncio.run(main())
    finished = exporter.get_finished_spans()
    outer = next(s for s in finished if s.name == "outer")
    chats = [s for s in finished if s.name != "outer"]
    assert len(chats) == 2
    for chat in chats:
        assert chat.parent is not None and chat.parent.span_id == outer.context.span_id


@pytest.mark.parametrize("capture", [False, True])
def test_a_failed_tools_text_is_on_its_span_only_when_content_is_captured(
    spans: Any, capture: bool
) -> None:
    """A tool's error text may hold personal data: like its result, it is not recorded
    unless ``capture_content=True``."""
    provider, exporter = spans
    cw, _ = tool_loop(provider, capture_content=capture)

    def lookup(a: Any) -> str:
        raise LookupError("no account for alice@example.com")

    cw.add_tool(Tool("multiply", "Multiply.").number("a").number("b"), lookup)
    cw.call()
    tool = by_name(exporter.get_finished_spans())["execute_tool multiply"]
    assert tool.status.status_code is StatusCode.ERROR
    assert dict(tool.attributes or {})["error.type"] == "tool_error"
    assert ("alice@example.com" in (tool.status.description or "")) is capture


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_cut_replys_span_has_the_usage_its_checkpoint_was_billed(spans: Any, mode: str) -> None:
    """Anthropic reports the input tokens as the stream starts: a reply cut after that was
    billed them, and its checkpoint says so; so does its span."""
    provider, exporter = spans
    body = real_fixture("anthropic/text_basic_sonnet45.sse").read_bytes()
    replay = Replay(ReplayReply(body, cut_after=4))
    model = AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, retry=None, tracing=Tracing(provider))
    cw.add_prompt("hi")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call() if mode == "sync" else asyncio.run(cw.acall())
    billed = cut.value.checkpoint.usage
    assert billed is not None and billed.input_tokens > 0
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["gen_ai.usage.input_tokens"] == billed.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == billed.output_tokens
