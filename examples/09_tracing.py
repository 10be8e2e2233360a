"""07 — OpenTelemetry spans of replies and their tool calls (GenAI semantic conventions).

Runs offline: a tool loop through the real ``openai`` SDK from a replay transport, traced
into OpenTelemetry's in-memory exporter (``pip install 'rxcontext[otel]' opentelemetry-sdk``)
and printed. In production give ``Tracing`` nothing (the global tracer provider, set up with
your exporter) or your own ``TracerProvider``.

    python examples/09_tracing.py
"""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import rxcontext
from rxcontext import ContextWindow, StreamInterrupted, Tool
from rxcontext.providers.replay import ScriptedReply, replay_model
from rxcontext.tracing import Tracing


def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    replies = [
        ScriptedReply(tool_calls=[("call_1", "weather", {"city": "Porto"})], usage=(60, 12)),
        ScriptedReply("Sunny in Porto, 21 °C.", usage=(95, 9)),
        ScriptedReply("Lisbon: also sunny, and ", cut_after=4, usage=(120, 6)),
    ]
    model, _ = replay_model(replies, model_name="gpt-4o-mini")
    cw = ContextWindow(rxcontext.open(":memory:"), model, retry=None, tracing=Tracing(provider))
    weather = Tool("weather", "Current weather").string("city", "City name")
    cw.add_tool(weather, lambda args: f"sunny, 21 °C in {args['city']}")

    cw.add_prompt("Weather in Porto?")
    cw.call(reply_id="porto-1")
    cw.add_prompt("And Lisbon?")
    try:
        cw.call(reply_id="lisbon-1")  # this replay cuts the stream halfway
    except StreamInterrupted as cut:
        print(f"cut: checkpoint {cut.checkpoint.id}\n")

    for span in sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0):
        attrs = dict(span.attributes or {})
        why = f": {span.status.description}" if span.status.description else ""
        print(f"{span.name}  [{span.status.status_code.name}{why}]")
        for key in sorted(attrs):
            print(f"    {key} = {attrs[key]}")


if __name__ == "__main__":
    main()
