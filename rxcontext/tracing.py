"""OpenTelemetry spans for replies, after the GenAI semantic conventions (``rxcontext[otel]``).

::

    from rxcontext.tracing import Tracing

    cw = ContextWindow(store, model, tracing=Tracing())          # the global tracer provider
    cw = ContextWindow(store, model, tracing=Tracing(provider))  # or a given one

Each reply (each subscription of ``cw.stream()``, each ``call()``...) is one span named
``chat {model}`` (kind CLIENT) from the moment its request is sent until it is stored or
interrupted, with the attributes of the GenAI conventions' inference span:
``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name`` (and the older
``gen_ai.system``, for backends that still read it), ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.response.id``, ``gen_ai.response.finish_reasons``,
``gen_ai.usage.input_tokens`` / ``output_tokens`` / ``cache_read.input_tokens`` /
``cache_creation.input_tokens`` / ``reasoning.output_tokens`` (summed over a tool loop's
rounds, a cut round's as its checkpoint holds it), ``gen_ai.conversation.id`` (the
context's id), and rxcontext's own ``rxcontext.reply.id``, ``rxcontext.context.name``,
``rxcontext.rounds``. Every tool a reply runs is a child span ``execute_tool {name}``
(``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.tool.type``; status ERROR when
the tool failed, was cancelled or raised a BaseException), the current span while the tool
runs: spans the tool opens are its children.

An interrupted reply's span ends with status ERROR, ``error.type`` (the cause's class, or
``cancelled``) and ``rxcontext.checkpoint.id``, the checkpoint to resume (none when the
store failed to write it: ``error.type`` is then the store's error). Tracing only
observes: it never raises into the stream (a failing exporter is logged), and exceptions of
the user's own code reach the user as before.

Prompt and reply text are not recorded unless ``capture_content=True``: then
``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON, the conventions' message
shape) and the tools' ``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result`` (and
a failed tool's error text, as its status description).
Attribute names are those of ``opentelemetry-semantic-conventions`` 0.66 (GenAI, in
development upstream).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .chunks import Reply, Usage
from .errors import MissingDependency
from .records import Checkpoint, Record, RecordType

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .tools import ToolResult

__all__ = ["ReplyTrace", "Tracing"]

_log = logging.getLogger("rxcontext.tracing")

# GenAI provider names (gen_ai.provider.name well-known values) for rxcontext's.
_PROVIDERS = {
    "openai": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
}
_ROLES = {
    RecordType.PROMPT: "user",
    RecordType.MODEL_RESP: "assistant",
    RecordType.TOOL_CALL: "assistant",
    RecordType.TOOL_OUTPUT: "tool",
    RecordType.SYSTEM_PROMPT: "system",
}


def _otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise MissingDependency("opentelemetry-api", "otel", "needed for tracing") from exc
    return trace


class Tracing:
    """Makes one :class:`ReplyTrace` per reply; give it to ``ContextWindow(tracing=...)``.

    ``tracer_provider``: where spans go (None: OpenTelemetry's global provider).
    ``capture_content``: also record prompt, reply and tool texts (off by default: they
    may hold personal data).
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, capture_content: bool = False
    ) -> None:
        trace = _otel()
        self.capture_content = capture_content
        self._tracer: Tracer = trace.get_tracer("rxcontext", tracer_provider=tracer_provider)

    def reply(self, *, model_name: str | None, context_id: str, context_name: str) -> ReplyTrace:
        """A trace for one reply (begun when its request is sent)."""
        return ReplyTrace(self, model_name, context_id, context_name)


def _quietly(method: Callable[..., None]) -> Callable[..., None]:
    """Tracing must never break a stream: a failure of ours (or an exporter's) is logged."""

    def guarded(self: ReplyTrace, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:
            _log.exception("rxcontext tracing failed; the stream goes on")

    guarded.__doc__ = method.__doc__
    return guarded


class ReplyTrace:
    """The span of one reply, fed by the persister (begin, rounds, end) and the tool runs."""

    def __init__(
        self, tracing: Tracing, model_name: str | None, context_id: str, context_name: str
    ) -> None:
        provider, _, model = (model_name or "").partition(":")
        self._tracing = tracing
        self.provider = provider or None
        self.model = model or provider or "unknown"
        self.context_id = context_id
        self.context_name = context_name
        self.span: Span | None = None
        self.usage: Usage | None = None
        self.finish_reasons: list[str] = []
        self.rounds = 0
        self.response_id: str | None = None
        self._output: list[dict[str, Any]] = []

    @_quietly
    def begin(self, reply_id: str | None) -> None:
        """The request is being sent: start the span."""
        if self.span is not None:
            return
        trace = _otel()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.model,
            "gen_ai.conversation.id": self.context_id,
            "rxcontext.context.name": self.context_name,
        }
        if self.provider:
            name = _PROVIDERS.get(self.provider, self.provider)
            attributes["gen_ai.provider.name"] = name
            attributes["gen_ai.system"] = name
        if reply_id:
            attributes["rxcontext.reply.id"] = reply_id
        self.span = self._tracing._tracer.start_span(
            f"chat {self.model}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )

    @_quietly
    def request(self, records: Sequence[Record]) -> None:
        """The first round's request (its input messages, when content is captured)."""
        if self.span is None or not self._tracing.capture_content or self.rounds:
            return
        messages = [
            {
                "role": _ROLES.get(r.type, "user"),
                "parts": [{"type": "text", "content": r.content}],
            }
            for r in records
        ]
        self.span.set_attribute("gen_ai.input.messages", json.dumps(messages))

    @_quietly
    def round(self, reply: Reply) -> None:
        """One model response of the reply was stored."""
        self.rounds += 1
        if reply.usage is not None:
            self.usage = reply.usage if self.usage is None else self.usage + reply.usage
        if reply.finish_reason:
            self.finish_reasons.append(reply.finish_reason)
        if reply.response_id:
            self.response_id = reply.response_id
        if self._tracing.capture_content:
            parts: list[dict[str, Any]] = []
            if reply.text:
                parts.append({"type": "text", "content": reply.text})
            parts.extend(
                {"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments}
                for c in reply.tool_calls
            )
            self._output.append(
                {"role": "assistant", "parts": parts, "finish_reason": reply.finish_reason}
            )

    def _counts(self, span: Span) -> None:
        span.set_attribute("gen_ai.response.model", self.model)
        span.set_attribute("rxcontext.rounds", self.rounds)
        if self.response_id:
            span.set_attribute("gen_ai.response.id", self.response_id)
        if self.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", self.finish_reasons)
        usage = self.usage
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", usage.cache_write_tokens)
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens)
        if self._output:
            span.set_attribute("gen_ai.output.messages", json.dumps(self._output))

    @_quietly
    def completed(self) -> None:
        """The reply was stored whole: end the span."""
        span, self.span = self.span, None
        if span is None:
            return
        self._counts(span)
        span.end()

    @_quietly
    def interrupted(self, checkpoint: Checkpoint | None, error: BaseException | None) -> None:
        """The reply was cut (error, cancel, dispose); ``checkpoint`` keeps what was
        delivered. End the span with status ERROR."""
        span, self.span = self.span, None
        if span is None:
            return
        trace = _otel()
        if checkpoint is not None and checkpoint.usage is not None:
            # The cut round was billed too: its checkpoint holds what it was (no round of
            # the reply stored it).
            usage = checkpoint.usage
            self.usage = usage if self.usage is None else self.usage + usage
        self._counts(span)
        kind = type(error).__name__ if error is not None else "cancelled"
        span.set_attribute("error.type", kind)
        if checkpoint is not None:
            span.set_attribute("rxcontext.checkpoint.id", checkpoint.id)
        why = checkpoint.error if checkpoint is not None and checkpoint.error else kind
        span.set_status(trace.Status(trace.StatusCode.ERROR, why))
        span.end()

    @contextmanager
    def tool(self, call_id: str, name: str, arguments: Any) -> Iterator[list[ToolResult]]:
        """A child span around one tool run, the current span while the tool runs (the
        spans it opens are its children); put its :class:`~rxcontext.tools.ToolResult` in
        the yielded list."""
        got: list[ToolResult] = []
        span = self._tool_span(call_id, name, arguments)
        if span is None:
            yield got
            return
        # Made current in this context: a sync tool's worker thread (asyncio.to_thread)
        # and an async tool's coroutine run in a copy of it.
        with _otel().use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            try:
                yield got
            except BaseException as exc:  # cancelled, Ctrl-C: no ToolResult to say so
                self._stopped_tool(span, exc)
                raise
            finally:
                self._end_tool(span, got)

    def _stopped_tool(self, span: Span, exc: BaseException) -> None:
        try:
            trace = _otel()
            kind = type(exc).__name__
            span.set_attribute("error.type", kind)
            span.set_status(trace.Status(trace.StatusCode.ERROR, kind))
        except Exception:
            _log.exception("rxcontext tracing failed; the stream goes on")

    def _tool_span(self, call_id: str, name: str, arguments: Any) -> Span | None:
        if self.span is None:
            return None
        try:
            trace = _otel()
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call_id,
                "gen_ai.tool.type": "function",
            }
            if self._tracing.capture_content:
                attributes["gen_ai.tool.call.arguments"] = json.dumps(arguments)
            return self._tracing._tracer.start_span(
                f"execute_tool {name}",
                context=trace.set_span_in_context(self.span),
                kind=trace.SpanKind.INTERNAL,
                attributes=attributes,
            )
        except Exception:
            _log.exception("rxcontext tracing failed; the tool runs anyway")
            return None

    def _end_tool(self, span: Span | None, got: list[ToolResult]) -> None:
        if span is None:
            return
        try:
            trace = _otel()
            if got:
                result = got[0]
                if self._tracing.capture_content:
                    span.set_attribute("gen_ai.tool.call.result", result.output)
                if result.error:
                    span.set_attribute("error.type", "tool_error")
                    # Its text, like its result, may hold personal data: only if asked.
                    why = result.output[:200] if self._tracing.capture_content else None
                    span.set_status(trace.Status(trace.StatusCode.ERROR, why))
            span.end()
        except Exception:
            _log.exception("rxcontext tracing failed; the stream goes on")
