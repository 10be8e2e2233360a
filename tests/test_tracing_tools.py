"""``execute_tool`` spans: the tool runs with its span as the current one (spans the tool
opens are its children), and a tool stopped by a BaseException (cancelled, Ctrl-C) ends
its span in error. Real OpenAI SDK on a recorded tool loop, sync and asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest
from replay import Replay, real_fixture

import rxcontext
from rxcontext import ContextWindow, Tool
from rxcontext.providers import OpenAIModel

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (rxcontext[test])")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rxcontext.tracing import Tracing

KEY = "sk-test-tracing-0123456789"
MULTIPLY = Tool("multiply", "Multiply.").number("a").number("b")


def tool_loop(
    tool: Callable[..., Any],
) -> tuple[ContextWindow, TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
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
    cw = ContextWindow(rxcontext.open(":memory:"), model, retry=None, tracing=Tracing(provider))
    cw.add_tool(MULTIPLY, tool)
    cw.add_prompt("What is 1231 * 2331?")
    return cw, provider, exporter


def parents(finished: tuple[ReadableSpan, ...]) -> dict[str, str | None]:
    ids = {s.context.span_id: s.name for s in finished}
    return {s.name: ids.get(s.parent.span_id) if s.parent else None for s in finished}


@pytest.mark.parametrize("mode", ["sync", "async, sync tool", "async, async tool"])
def test_a_span_the_tool_opens_is_a_child_of_its_execute_tool_span(mode: str) -> None:
    holder: list[TracerProvider] = []

    def work(a: Any) -> str:
        with holder[0].get_tracer("app").start_as_current_span("GET inventory"):
            return "2869461"

    async def awork(a: Any) -> str:
        return work(a)

    cw, provider, exporter = tool_loop(awork if mode == "async, async tool" else work)
    holder.append(provider)
    with provider.get_tracer("app").start_as_current_span("POST /chat"):
        if mode == "sync":
            cw.call()
        else:
            asyncio.run(cw.acall())
    assert parents(exporter.get_finished_spans()) == {
        "GET inventory": "execute_tool multiply",
        "execute_tool multiply": "chat gpt-4o-mini",
        "chat gpt-4o-mini": "POST /chat",
        "POST /chat": None,
    }


def test_a_tool_that_raises_a_base_exception_ends_its_span_in_error() -> None:
    def interrupted(a: Any) -> str:
        raise KeyboardInterrupt

    cw, _, exporter = tool_loop(interrupted)
    with pytest.raises(KeyboardInterrupt):
        cw.call()
    tool = next(s for s in exporter.get_finished_spans() if s.name == "execute_tool multiply")
    assert tool.status.status_code is StatusCode.ERROR
    assert dict(tool.attributes or {})["error.type"] == "KeyboardInterrupt"


def test_a_cancelled_async_tool_ends_its_span_in_error() -> None:
    async def main() -> tuple[ReadableSpan, ...]:
        started = asyncio.Event()

        async def slow(a: Any) -> str:
            started.set()
            await asyncio.Event().wait()  # never set: runs until cancelled
            return "never"

        cw, _, exporter = tool_loop(slow)
        task = asyncio.ensure_future(cw.acall())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return exporter.get_finished_spans()

    tool = next(s for s in asyncio.run(main()) if s.name == "execute_tool multiply")
    assert tool.status.status_code is StatusCode.ERROR
    assert dict(tool.attributes or {})["error.type"] == "CancelledError"
