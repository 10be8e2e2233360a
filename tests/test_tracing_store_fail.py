"""A reply whose store fails while it streams (an outage, ``store.close()`` at shutdown)
still ends its span, in error: exporters get every span a reply starts. Real OpenAI SDK on
a recorded stream, SQLite and PostgreSQL, sync and asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import Chunk, ContextWindow, StoreError
from rxcontext.providers import OpenAIModel

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (rxcontext[test])")
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rxcontext.tracing import Tracing

KEY = "sk-test-tracing-0123456789"


class Open(SpanProcessor):
    """The names of the spans started and not ended."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        self.open.pop(span.context.span_id, None)


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_store_closed_mid_reply_still_ends_the_reply_span(mode: str) -> None:
    exporter, live = InMemorySpanExporter(), Open()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(live)
    replay = Replay(real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse"))
    model = OpenAIModel(
        "gpt-4o-mini",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    store = open_store()
    cw = ContextWindow(store, model, retry=None, tracing=Tracing(provider))
    cw.add_prompt("What is 1231 * 2331?")

    def shut_down(chunk: Chunk) -> None:  # the app closes its store while a reply streams
        if not store.closed:
            store.close()

    with pytest.raises(StoreError):
        if mode == "sync":
            cw.stream().subscribe(shut_down)
        else:

            async def main() -> None:
                async for chunk in cw.astream():
                    shut_down(chunk)

            asyncio.run(main())
    assert live.open == {}
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert span.name == "chat gpt-4o-mini"
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["error.type"] == "StoreClosedError"
    assert "rxcontext.checkpoint.id" not in attrs  # nothing could be stored
