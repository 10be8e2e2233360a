"""Anthropic Messages API: records → ``messages.create`` requests, stream events → chunks.

Two wire paths give the same chunks (tests/test_wire_anthropic.py checks it): the default
``wire="fast"`` lets the SDK build, authenticate, send and status-check the request
(``messages.with_streaming_response.create``) but decodes the SSE frames itself with
``json.loads`` and dict access, about 3.5x faster than the SDK's own iteration;
``wire="sdk"`` iterates the SDK's raw event stream (``messages.create(..., stream=True)``,
one pydantic model per event). Non-streaming calls always use the SDK's ``Message``.
On every path the history goes into the SDK's body already encoded, each record once
(:mod:`._history`; the request side is :mod:`._anthropic_request`).

Choices worth knowing:

- Usage: ``input_tokens`` is all input, ``input_tokens + cache_creation_input_tokens +
  cache_read_input_tokens`` (Anthropic's own definition of the total), so that, as for
  OpenAI and Gemini, ``cached_tokens`` (= ``cache_read_input_tokens``) is a part of it, and
  so is ``cache_write_tokens`` (= ``cache_creation_input_tokens``), kept apart.
  ``output_tokens_details.thinking_tokens`` becomes ``reasoning_tokens`` and
  ``server_tool_use.web_search_requests`` (billed per search) ``web_search_requests``;
  web fetches cost only their tokens, so their count is not kept. message_delta
  counts are cumulative: a count it gives replaces the one from message_start, a count it
  leaves out keeps the earlier value; nothing is ever added.
- Server tools (``server_tool_use``, ``web_search_tool_result``, ...) run at Anthropic, so
  they make no TOOL_CALL chunks (the window must not run them) and are not sent back; the
  answer's text is kept. ``citations_delta`` events are dropped (the cited text is in the
  text deltas; citations themselves are not kept).
- The reply ends at ``message_stop``: nothing after it is read (a proxy that holds the
  connection open, drops it or sends more does not turn a whole reply into an error).
  A stream that ends without a ``stop_reason`` (no message_delta) was cut: it raises a
  retryable ``ProviderError`` (``error_type="incomplete_stream"``) instead of passing for a
  complete reply. A ``max_tokens`` stop inside a tool_use block is a complete reply whose
  tool call has unterminated arguments (``ToolCall.error`` says so).
- An in-stream ``error`` event (e.g. ``overloaded_error`` on HTTP 200) is raised on both
  wires as the SDK raises it (its ``APIStatusError``, the ``ProviderError``'s ``__cause__``)
  and classified by the error body's ``type``; ``status_code`` is then ``None`` (the HTTP
  status was 200). So is a JSON error body sent in place of the stream (a gateway's ``200
  application/json``; see :mod:`._error_body`).
- A malformed event (not UTF-8, not JSON, a field of the wrong type) ends the stream with a
  ``ProviderError`` (``error_type`` ``invalid_utf8`` / ``invalid_json`` / ``invalid_event``)
  on both wires, after the same chunks (see ``_common.malformed_event``).
- DONE metadata: ``anthropic_stop_sequence`` when a stop sequence matched; ``refusal``
  (``True``) when the model refused (``stop_reason`` ``"refusal"``), as OpenAI refusals
  are flagged, so the reply's and the record's metadata say so too.
- Requests: a reply's text of whitespace only is not sent back (the API refuses such a
  text block; claude-opus-4-6 opens replies with "\\n\\n"): its thinking and tool_use
  blocks are. A history that opens with a reply (its first prompt killed) is sent as it
  is: the API takes a first message of the assistant's (Bedrock refused one in 2024).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, NoReturn, TypeVar

from ._sdk import missing_sdk

try:
    import anthropic
except ImportError as exc:  # an optional extra: name it
    raise missing_sdk("anthropic", "anthropic", exc) from exc
import httpx2
from anthropic.types import RawMessageStreamEvent

from ..attachments import Attachment
from ..chunks import Chunk, ChunkKind, ChunkShell, Reply, Usage
from ..errors import ProviderError
from ..schema import OutputSchema
from ._abort import noted
from ._anthropic_request import (
    AnthropicHistory,
    build_messages,
    encode_body,
    history_tools,
    last_block_cacheable,
    mark_cache,
    mark_last_message,
    mark_last_message_json,
    sdk_kwargs,
    splicing,
)
from ._anthropic_schema import anthropic_schema
from ._attachments import check as check_attachments
from ._common import (
    READ_ERRORS,
    BadEvent,
    Lazy,
    Wire,
    bad_field,
    check_wire,
    incomplete_stream,
    int_field,
    is_retryable_status,
    malformed_event,
    mask_chain,
    provider_error,
    refused_request,
    sent_secrets,
    str_field,
    transport_error,
)
from ._error_body import tap
from ._extra import MODEL, STREAM, refuse_keys, refused_history, refused_system, with_tools
from ._options import anthropic_options
from ._sse import SSEDecoder
from ._stainless import HISTORY, AsyncSplicingClient, Posting, Splice, SplicingClient, StandIns
from .base import Request, reply_from_chunks

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicModel", "build_messages"]

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` is required by the API; this is used unless params or the request say."""


# Error body types that may succeed when the same request is sent again.
_RETRYABLE_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})

_TEXT = ChunkKind.TEXT
_REFUSED = "refusal"  # the stop_reason of a refused reply
_REFUSAL_KEY = "refusal"  # DONE, reply and record metadata: True for a refusal (as OpenAI's)
_THINKING = ChunkKind.THINKING
_TOOL_CALL = ChunkKind.TOOL_CALL
_C = TypeVar("_C", anthropic.Anthropic, anthropic.AsyncAnthropic)


_SETTINGS_REFUSED = {"model": MODEL, "messages": refused_history("messages"), "stream": STREAM}
"""Constructor settings refused: ``messages.create`` gets them from rxcontext."""
_EXTRA_REFUSED = {**_SETTINGS_REFUSED, "system": refused_system("system")}
"""Keys of a call's ``extra`` refused (a constructor ``system`` is the default of a window
without a system prompt)."""


class AnthropicModel:
    """Claude through the official ``anthropic`` SDK (sync and async).

    ::

        AnthropicModel("claude-sonnet-4-6", client=anthropic.Anthropic(...), temperature=0.2)

    ``params`` go into every request (``max_tokens``, ``temperature``, ``thinking``, extra
    server ``tools``...); ``Request.max_output_tokens`` and ``Request.options`` override
    them; keywords ``messages.create`` lacks (``temperature`` in anthropic 2.x) travel in
    ``extra_body``. Without ``client``/``async_client`` one is built from
    ``ANTHROPIC_API_KEY`` on first use of that path. ``wire="sdk"`` switches from the fast
    SSE decoder back to the SDK's event models.

    A request that offers no tools over a history with tool rounds (``disable_tools=True``,
    a tool removed, a window with none continuing the context) declares the tools the
    history names, with empty schemas, and ``tool_choice`` none: the API refuses tool
    blocks in a request without tools, and the model may call none of them.

    Prompt caching is on by default (``cache=False`` turns it off): each request puts
    ``cache_control`` breakpoints on the last tool, the system prompt and the last block of
    the history, so the next request of the conversation reads that prefix from Anthropic's
    cache (cheaper, faster); at most four in all, counting any already in ``params``.
    Prefixes shorter than the model's minimum (1,024 tokens for most) are not cached, and
    cost nothing more. Usage keeps the tokens read from the cache (``cached_tokens``) and
    written to it (``cache_write_tokens``) apart.
    """

    call_options = frozenset(
        {"temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema"}
    )
    """Per-call options this model sends (see :data:`rxcontext.options.PROVIDER_PARAMETERS`)."""

    def __init__(
        self,
        model_name: str,
        *,
        client: anthropic.Anthropic | None = None,
        async_client: anthropic.AsyncAnthropic | None = None,
        wire: Wire = "fast",
        context_window: int | None = None,
        cache: bool = True,
        **params: Any,
    ) -> None:
        self.model_name = model_name
        self.cache = cache
        """Whether requests carry prompt-caching breakpoints (see the class docstring)."""
        self.wire: Wire = check_wire(wire)
        self.context_window = context_window
        """The model's context size in tokens, if given: a window's default ``max_tokens``."""
        self.params = dict(params)
        refuse_keys(self.params, _SETTINGS_REFUSED, model=self.name, per_call=False)
        self._history = AnthropicHistory()
        # The SDK's own retries are off: rxcontext retries itself (before the first chunk).
        self._client: Lazy[anthropic.Anthropic] = Lazy(
            lambda: anthropic.Anthropic(max_retries=0), client
        )
        self._async_client: Lazy[anthropic.AsyncAnthropic] = Lazy(
            lambda: anthropic.AsyncAnthropic(max_retries=0), async_client
        )
        self._stand_ins = StandIns(_stand_in)
        self._astand_ins = StandIns(_stand_in)

    @property
    def name(self) -> str:
        """``"anthropic:<model>"``."""
        return f"{PROVIDER}:{self.model_name}"

    def check_attachments(self, attachments: Sequence[Attachment]) -> None:
        """Raise :class:`~rxcontext.UnsupportedAttachment` for an attachment this model's
        API does not take (``ContextWindow.add_prompt`` asks before storing the prompt)."""
        check_attachments(PROVIDER, attachments)

    def check_extra(self, extra: Mapping[str, Any], tools: bool) -> None:
        """Raise :class:`~rxcontext.UnsupportedOption` for a key of a call's ``extra`` that
        this model sets itself (``tools``: whether the call offers the window's tools)."""
        refuse_keys(extra, with_tools(_EXTRA_REFUSED, tools), model=self.name, per_call=True)

    def check_schema(self, schema: OutputSchema) -> None:
        """Raise :class:`~rxcontext.SchemaError` for a structured-output schema this model's
        API cannot be sent (see :mod:`._anthropic_schema`)."""
        anthropic_schema(schema.json_schema)

    def request_body(self, request: Request) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``request`` (without ``stream``)."""
        system, messages = build_messages(request.records)
        body = self._body(request, system, messages)
        if self._mark_history(body, request) and messages:
            body["messages"] = mark_last_message(messages)
        return sdk_kwargs(body)

    def _mark_history(self, body: dict[str, Any], request: Request) -> bool:
        """Mark ``body``'s tools and system for caching; whether to mark the history too."""
        if not self.cache:
            return False
        return mark_cache(body) > 0 and last_block_cacheable(request.records)

    def _body(self, request: Request, system: str, messages: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": DEFAULT_MAX_TOKENS,
            **self.params,
        }
        if request.max_output_tokens is not None:
            body["max_tokens"] = request.max_output_tokens
        body["messages"] = messages
        if system:
            body["system"] = system
        if request.tools:
            body["tools"] = [*body.get("tools", ()), *(t.to_anthropic() for t in request.tools)]
        body.update(request.options)
        body.update(anthropic_options(request.call, anthropic_schema, body))
        body.update(request.call.extra)
        if not body.get("tools"):
            # A history with tool rounds needs tools declared, even when none is offered.
            declared = history_tools(request.records)
            if declared:
                body["tools"] = declared
                body["tool_choice"] = {"type": "none"}
        return body

    def _prepared(
        self, client: _C, request: Request, stand_ins: StandIns
    ) -> tuple[_C, dict[str, Any], list[bytes] | None]:
        """The client to call, the ``messages.create`` arguments for ``request`` and the
        history to splice (None: none).

        A plain client gets the history already encoded, spliced into the body by its
        stand-in (see :mod:`._history`, :mod:`._stainless`: the call is made inside
        ``Splice(history)``); others get :meth:`request_body`.
        """
        if not splicing(client):
            return client, self.request_body(request), None
        system, history = self._history.encode(request.records)
        body = self._body(request, system, HISTORY)
        if self._mark_history(body, request) and history:
            history = mark_last_message_json(history)  # a copy: the cached list stays
        return stand_ins.get(client), sdk_kwargs(body), history

    # -- streaming ---------------------------------------------------------------------

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Stream ``request`` with the sync client; closing the generator closes the stream."""
        client, body, history = self._prepared(self._client.get(), request, self._stand_ins)
        if self.wire == "fast":
            return _guard(_fast_chunks(client, body, history), _secrets(client))
        return _sdk_chunks(client, body, history, _secrets(client))

    def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`iter_chunks`."""
        client, body, history = self._prepared(self._async_client.get(), request, self._astand_ins)
        if self.wire == "fast":
            return _aguard(_afast_chunks(client, body, history), _secrets(client))
        return _aguard(_asdk_chunks(client, body, history), _secrets(client))

    # -- non-streaming -----------------------------------------------------------------

    def complete(self, request: Request) -> Reply:
        """One non-streaming ``messages.create`` call, reduced like a stream."""
        client, body, history = self._prepared(self._client.get(), request, self._stand_ins)
        try:
            with Splice(history):
                message = client.messages.create(**body)
        except Exception as exc:
            raise _classify(exc, _secrets(client)) from exc
        return reply_from_chunks(_message_chunks(message))

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        client, body, history = self._prepared(self._async_client.get(), request, self._astand_ins)
        try:
            with Splice(history):
                message = await client.messages.create(**body)
        except Exception as exc:
            raise _classify(exc, _secrets(client)) from exc
        return reply_from_chunks(_message_chunks(message))


def _stand_in(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> Any:
    """``client``'s splicing stand-in: its ``messages`` a resource of the SDK's on it, with
    the resource's ``with_streaming_response`` (``functools.wraps`` of two methods) made
    here, once, not per request."""
    stand_in: Any
    if isinstance(client, anthropic.AsyncAnthropic):
        stand_in = AsyncSplicingClient(client, "messages", encode_body)
        stand_in.messages = anthropic.resources.messages.AsyncMessages(stand_in)
    else:
        stand_in = SplicingClient(client, "messages", encode_body)
        stand_in.messages = anthropic.resources.messages.Messages(stand_in)
    stand_in.messages.with_streaming_response  # noqa: B018 (a cached property, made now)
    return stand_in


# -- errors -------------------------------------------------------------------------------


def _secrets(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> tuple[str | None, ...]:
    return (client.api_key, client.auth_token)


def _error_from_body(
    status: int,
    body: object,
    headers: Mapping[str, str] | None,
    secrets: tuple[str | None, ...],
) -> ProviderError:
    """Classify an error response (``status`` >= 400) or an in-stream error event (200)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error_type = error.get("type") if isinstance(error, Mapping) else None
    if not isinstance(error_type, str):
        error_type = None
    detail = error.get("message") if isinstance(error, Mapping) else None
    detail = str(detail or body or "no details")
    label = str(error_type or "error")
    if status < 400:
        retryable = error_type in _RETRYABLE_TYPES
        status_code = None
        message = f"{label} in the event stream: {detail}"
    else:
        retryable = is_retryable_status(status) or error_type in _RETRYABLE_TYPES
        status_code = status
        message = f"HTTP {status} {label}: {detail}"
    if retryable:
        message += " (retryable: send the request again later)"
    elif status in (401, 403):
        message += " (check ANTHROPIC_API_KEY or the client's api_key)"
    return provider_error(
        PROVIDER,
        message,
        status_code=status_code,
        error_type=str(error_type) if error_type else None,
        retryable=retryable,
        headers=headers,
        secrets=secrets,
    )


def _classify(exc: BaseException, secrets: tuple[str | None, ...]) -> BaseException:
    """The :class:`ProviderError` for ``exc``, or ``exc`` itself if it is not a provider failure."""
    if isinstance(exc, ProviderError):
        return exc
    secrets = sent_secrets(exc, secrets)  # a credentials= provider's token, say
    mask_chain(exc, secrets)  # it becomes the ProviderError's __cause__
    if isinstance(exc, anthropic.APIStatusError):
        return _error_from_body(exc.status_code, exc.body, exc.response.headers, secrets)
    if isinstance(exc, anthropic.APITimeoutError):
        return provider_error(
            PROVIDER, f"timeout: {exc}", error_type="timeout", retryable=True, secrets=secrets
        )
    if isinstance(exc, anthropic.APIConnectionError):
        refused = refused_request(exc, PROVIDER, secrets)
        if refused is not None:
            return refused
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc} ({type(cause).__name__}: {cause})" if cause else str(exc)
        return provider_error(
            PROVIDER,
            f"connection_error: {detail}",
            error_type="connection_error",
            retryable=True,
            secrets=secrets,
        )
    if isinstance(exc, anthropic.APIError):
        return provider_error(
            PROVIDER, f"api_error: {exc}", error_type="api_error", retryable=False, secrets=secrets
        )
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        # Raised by the SDK's stream (wire="sdk") or by our decoder (wire="fast") alike.
        return malformed_event(PROVIDER, exc, secrets=secrets)
    err = transport_error(exc, PROVIDER, secrets)
    return exc if err is None else err


def _incomplete() -> ProviderError:
    return incomplete_stream(PROVIDER, "a stop_reason (no message_delta)")


def _guard(chunks: Iterator[Chunk], secrets: tuple[str | None, ...]) -> Iterator[Chunk]:
    try:
        yield from chunks
    except Exception as exc:
        err = _classify(exc, secrets)
        if err is exc:
            raise
        raise err from exc


async def _aguard(
    chunks: AsyncGenerator[Chunk, None], secrets: tuple[str | None, ...]
) -> AsyncIterator[Chunk]:
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        err = _classify(exc, secrets)
        if err is exc:
            raise
        raise err from exc
    finally:
        await chunks.aclose()


# -- stream state shared by both wire paths ----------------------------------------------


class _Turn:
    """What one streamed message has said so far besides its deltas."""

    __slots__ = (
        "blocks",
        "cache_read",
        "cache_write",
        "input",
        "output",
        "response_id",
        "secrets",
        "stop_reason",
        "stop_sequence",
        "stopped",
        "thinking",
        "web_searches",
    )

    def __init__(self, secrets: tuple[str | None, ...] = ()) -> None:
        self.secrets = secrets
        self.blocks: dict[int, Any] = {}  # block type by index, as sent
        self.response_id: str | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.stopped = False  # message_stop seen: the message is whole, read no further
        self.input: int | None = None
        self.output: int | None = None
        self.cache_write: int | None = None
        self.cache_read: int | None = None
        self.thinking: int | None = None
        self.web_searches: int | None = None

    def count(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_write: int | None,
        cache_read: int | None,
        thinking: int | None,
        web_searches: int | None,
    ) -> Chunk:
        """Take the cumulative counts given (None keeps the earlier one); a USAGE chunk.

        A count that is not an int raises before anything is taken.
        """
        int_field(input_tokens, "usage.input_tokens")
        int_field(output_tokens, "usage.output_tokens")
        int_field(cache_write, "usage.cache_creation_input_tokens")
        int_field(cache_read, "usage.cache_read_input_tokens")
        int_field(thinking, "usage.output_tokens_details.thinking_tokens")
        int_field(web_searches, "usage.server_tool_use.web_search_requests")
        if input_tokens is not None:
            self.input = input_tokens
        if output_tokens is not None:
            self.output = output_tokens
        if cache_write is not None:
            self.cache_write = cache_write
        if cache_read is not None:
            self.cache_read = cache_read
        if thinking is not None:
            self.thinking = thinking
        if web_searches is not None:
            self.web_searches = web_searches
        return Chunk(ChunkKind.USAGE, usage=self.usage())

    def usage(self) -> Usage:
        """Totals so far."""
        return Usage.of(
            input_tokens=(self.input or 0) + (self.cache_write or 0) + (self.cache_read or 0),
            output_tokens=self.output,
            cached_tokens=self.cache_read,
            reasoning_tokens=self.thinking,
            cache_write_tokens=self.cache_write,
            web_search_requests=self.web_searches,
        )

    def done(self) -> Chunk:
        """The final DONE chunk; raises if the message never stopped."""
        if self.stop_reason is None:
            raise _incomplete()
        has_usage = self.input is not None or self.output is not None
        metadata: dict[str, Any] = {}
        if self.stop_sequence:
            metadata["anthropic_stop_sequence"] = self.stop_sequence
        if self.stop_reason == _REFUSED:
            # Flagged as OpenAI refusals are; the text came before the stop reason said so.
            metadata[_REFUSAL_KEY] = True
        return Chunk(
            ChunkKind.DONE,
            finish_reason=self.stop_reason,
            response_id=self.response_id,
            usage=self.usage() if has_usage else None,
            metadata=metadata,
        )


# -- wire="sdk": the SDK's event models ---------------------------------------------------


def _sdk_chunks(
    client: anthropic.Anthropic,
    body: dict[str, Any],
    history: list[bytes] | None,
    secrets: tuple[str | None, ...],
) -> Iterator[Chunk]:
    # Guarded as _guard guards the fast wire's chunks, but in this generator's own frame:
    # one generator level less for every chunk on this path.
    try:
        with Splice(history):
            stream = client.messages.create(**body, stream=True)
        try:
            turn = _Turn(secrets)
            kept = tap(stream.response)
            try:
                with noted(stream.response):
                    for event in _events(stream):
                        # Most events: a text delta, read from the models' __dict__ (type(),
                        # not .__class__: on a pydantic model every attribute read, even
                        # __class__, goes through CPython's slow __getattr__ slot).
                        if type(event) is _DELTA_EVENT:
                            fields = event.__dict__
                            try:
                                delta = fields["delta"]
                                index = fields["index"]
                                if (
                                    type(delta) is _TEXT_DELTA
                                    and type(index) is int
                                    and fields["type"] == "content_block_delta"
                                ):
                                    got = delta.__dict__
                                    text = got["text"]
                                    if type(text) is not str or got["type"] != "text_delta":
                                        text = None
                                else:
                                    text = None
                            except KeyError:
                                text = None  # a field missing: _sdk_event says which
                            if text is not None:
                                if text:
                                    # new_chunk(_TEXT, text, index), without the call
                                    c = ChunkShell()
                                    c.kind = _TEXT
                                    c.text = text
                                    c.index = index
                                    c.id = c.name = c.usage = None
                                    c.finish_reason = c.response_id = None
                                    c.metadata = {}
                                    c.__class__ = Chunk  # type: ignore[assignment]
                                    yield c  # type: ignore[misc]
                                continue
                        yield from _sdk_event(turn, event)  # anything else, as it was
                        if turn.stopped:
                            break
            except anthropic.APIConnectionError as exc:
                _raise_read_error(exc)
            kept.raise_error(_body_error(client, stream.response))
            yield turn.done()
        finally:
            stream.close()
    except Exception as exc:
        err = _classify(exc, secrets)
        if err is exc:
            raise
        raise err from exc


def _events(stream: anthropic.Stream[Any]) -> Iterator[Any]:
    """What :func:`_sdk_chunks` iterates for ``stream``'s events: the SDK's own generator
    of them (``Stream._iterator``) when ``Stream.__iter__`` would only pass each on, else
    the stream itself.

    ``Stream.__iter__`` yields every item of ``_iterator``, first handing it to the tracing
    observer on the response's body (``_observer``: set when the client's OpenTelemetry
    spans record, before ``create`` returns the stream, and never changed while it is
    read). Without one it adds a generator level and two attribute look-ups to every event
    and nothing else, so the items are read from ``_iterator`` directly. With an observer,
    a subclass's own ``__iter__``, or an SDK whose ``Stream`` has not these two members,
    the stream is iterated as the SDK's users iterate it."""
    if _PASSES_ON and type(stream).__iter__ is _STREAM_ITER and stream._observer is None:
        return stream._iterator
    return stream


def _only_passes_on(stream_type: type) -> bool:
    """Whether ``stream_type`` (the SDK's ``Stream``) has the members :func:`_events` looks
    at, and an ``__iter__`` that only passes its items on: the names it uses are those of
    the SDK read when this was written (it reads ``_iterator``, hands each item to
    ``_observer``'s ``item``, and nothing else), so an SDK whose ``__iter__`` does more per
    event is iterated as its users iterate it."""
    code = getattr(getattr(stream_type, "__iter__", None), "__code__", None)
    return (
        isinstance(getattr(stream_type, "_observer", None), property)
        and hasattr(stream_type, "_iterator")
        and code is not None
        and code.co_names == ("_iterator", "_observer", "item")
    )


_STREAM_ITER = anthropic.Stream.__iter__
_PASSES_ON = _only_passes_on(anthropic.Stream)

_DELTA_EVENT = anthropic.types.RawContentBlockDeltaEvent
_TEXT_DELTA = anthropic.types.TextDelta
"""A text delta is read from the models' ``__dict__`` (where pydantic keeps the fields):
an attribute read on a pydantic model goes through CPython's slow ``__getattr__`` slot.
Only an event of exactly these classes whose fields are as the API sends them is read so;
any other goes through :func:`_sdk_event`, with its checks and errors."""


async def _asdk_chunks(
    client: anthropic.AsyncAnthropic, body: dict[str, Any], history: list[bytes] | None
) -> AsyncGenerator[Chunk, None]:
    with Splice(history):
        stream = await client.messages.create(**body, stream=True)
    try:
        turn = _Turn(_secrets(client))
        kept = tap(stream.response)
        try:
            async for event in stream:
                for chunk in _sdk_event(turn, event):
                    yield chunk
                if turn.stopped:
                    break
        except anthropic.APIConnectionError as exc:
            _raise_read_error(exc)
        kept.raise_error(_body_error(client, stream.response))
        yield turn.done()
    finally:
        await stream.close()


def _body_error(
    client: anthropic.Anthropic | anthropic.AsyncAnthropic, http: httpx2.Response
) -> Callable[[Any], BaseException]:
    """How a JSON error body sent in place of ``http``'s stream (``200 application/json
    {"type": "error", ...}``, see :meth:`BodyTap.raise_error`) is raised: as the SDK's stream
    raises an ``error`` event."""
    return lambda body: client._make_status_error(f"{body}", body=body, response=http)


def _raise_read_error(exc: anthropic.APIConnectionError) -> NoReturn:
    """Raise the error the SDK wrapped while reading the body (or ``exc`` if none).

    From anthropic 2.17 the SDK's stream raises any failure to read the body as
    ``APIConnectionError`` (``APITimeoutError``) from the httpx2 error; earlier versions, and
    the fast wire, let that error through. Both wires, with any SDK version, so raise the
    same :class:`ProviderError` from the same transport error. A failure to connect is still
    the SDK's error (it happens in ``create``, outside this).
    """
    cause = exc.__cause__
    if isinstance(cause, Exception):
        raise cause from cause.__cause__  # its own chain (httpx2's from httpcore's) as it was
    raise exc


_MODELS: set[type] = set()
"""Classes seen to be the SDK's models: a set lookup per event field instead of pydantic's
``isinstance`` (an ABC check) on every event."""


def _model(value: Any, name: str) -> Any:
    """``value`` if it is one of the SDK's models; the SDK keeps a value it cannot build one
    from (a string, a number) as it came, and that is a malformed event."""
    cls = value.__class__
    if cls in _MODELS:
        return value
    if isinstance(value, anthropic.BaseModel):
        _MODELS.add(cls)
        return value
    raise bad_field(name, value)


def _index(value: Any) -> int:
    if value.__class__ is not int:
        raise bad_field("index", value)
    return int(value)


def _sdk_usage(turn: _Turn, usage: Any) -> Chunk:
    if usage is None:
        return turn.count(None, None, None, None, None, None)
    _model(usage, "usage")
    details = getattr(usage, "output_tokens_details", None)
    if details is not None:
        _model(details, "usage.output_tokens_details")
    server_tools = getattr(usage, "server_tool_use", None)
    if server_tools is not None:
        _model(server_tools, "usage.server_tool_use")
    return turn.count(
        getattr(usage, "input_tokens", None),
        getattr(usage, "output_tokens", None),
        getattr(usage, "cache_creation_input_tokens", None),
        getattr(usage, "cache_read_input_tokens", None),
        getattr(details, "thinking_tokens", None),
        getattr(server_tools, "web_search_requests", None),
    )


def _sdk_event(turn: _Turn, event: Any) -> list[Chunk]:
    """The chunks of one SDK event; a malformed one raises ``ProviderError``."""
    try:
        return _sdk_read(turn, event)
    except READ_ERRORS as exc:
        raise malformed_event(PROVIDER, exc, secrets=turn.secrets) from exc


def _sdk_read(turn: _Turn, event: Any) -> list[Chunk]:
    kind = _model(event, "the event").type
    if kind == "content_block_delta":
        delta = _model(event.delta, "delta")
        index = _index(event.index)
        dtype = delta.type
        if dtype == "text_delta":
            text = str_field(delta.text, "delta.text")
            return [Chunk(_TEXT, text, index)] if text else []
        if dtype == "input_json_delta":
            piece = str_field(delta.partial_json, "delta.partial_json")
            if piece and turn.blocks.get(index) == "tool_use":
                return [Chunk(_TOOL_CALL, piece, index)]
            return []
        if dtype == "thinking_delta":
            text = str_field(delta.thinking, "delta.thinking")
            return [Chunk(_THINKING, text, index)] if text else []
        if dtype == "signature_delta":
            sig = str_field(delta.signature, "delta.signature")
            if sig:
                return [Chunk(_THINKING, "", index, metadata={"signature": sig})]
        return []
    if kind == "content_block_start":
        block = _model(event.content_block, "content_block")
        index = _index(event.index)
        btype = block.type
        if btype == "text":
            text = str_field(block.text, "content_block.text")
            turn.blocks[index] = btype
            return [Chunk(_TEXT, text, index)] if text else []
        if btype == "tool_use":
            call_id = str_field(block.id, "content_block.id")
            name = str_field(block.name, "content_block.name")
            if call_id is None or name is None:
                raise bad_field("a tool_use block's id and name", (call_id, name))
            turn.blocks[index] = btype
            return [Chunk(_TOOL_CALL, "", index, id=call_id, name=name)]
        if btype == "thinking":
            text = str_field(block.thinking, "content_block.thinking")
            sig = str_field(block.signature, "content_block.signature")
            turn.blocks[index] = btype
            out = [Chunk(_THINKING, text, index)] if text else []
            if sig:
                out.append(Chunk(_THINKING, "", index, metadata={"signature": sig}))
            return out
        if btype == "redacted_thinking":
            data = str_field(block.data, "content_block.data")
            if data is None:
                raise bad_field("content_block.data", data)
            turn.blocks[index] = btype
            return [Chunk(_THINKING, "", index, metadata={"redacted": data})]
        turn.blocks[index] = btype
        return []
    if kind == "message_delta":
        delta = event.delta
        stop_reason = stop_sequence = None
        if delta is not None:
            _model(delta, "delta")
            stop_reason = str_field(delta.stop_reason, "delta.stop_reason")
            stop_sequence = str_field(delta.stop_sequence, "delta.stop_sequence")
        usage = _sdk_usage(turn, event.usage)
        turn.stop_reason = stop_reason
        turn.stop_sequence = stop_sequence
        return [usage]
    if kind == "message_start":
        message = _model(event.message, "message")
        response_id = str_field(message.id, "message.id")
        usage = _sdk_usage(turn, message.usage)
        turn.response_id = response_id
        return [usage]
    if kind == "message_stop":
        turn.stopped = True
    return []


# -- wire="fast": SSE frames straight to chunks --------------------------------------------


def _fast_chunks(
    client: anthropic.Anthropic, body: dict[str, Any], history: list[bytes] | None
) -> Iterator[Chunk]:
    # The SDK builds, authenticates and sends the request and raises HTTP errors on entry.
    opening = client.messages.with_streaming_response.create(**body, stream=True)
    with (
        Posting(opening, history) as response,
        noted(response.http_response),
    ):
        http = response.http_response
        kept = tap(http)
        decoder = SSEDecoder("anthropic")
        turn = _Turn(_secrets(client))
        read = _FastReader(client, http, turn).read
        for data in http.iter_bytes():
            for event, payload in decoder.feed(data):
                yield from read(event, payload)
                if turn.stopped:
                    break
            if turn.stopped:
                break
        if not turn.stopped:
            for event, payload in decoder.flush():
                yield from read(event, payload)
                if turn.stopped:
                    break
        kept.raise_error(_body_error(client, http))
        yield turn.done()


async def _afast_chunks(
    client: anthropic.AsyncAnthropic, body: dict[str, Any], history: list[bytes] | None
) -> AsyncGenerator[Chunk, None]:
    opening = client.messages.with_streaming_response.create(**body, stream=True)
    async with Posting(opening, history) as response:
        http = response.http_response
        kept = tap(http)
        decoder = SSEDecoder("anthropic")
        turn = _Turn(_secrets(client))
        read = _FastReader(client, http, turn).read
        # Closed here, not left for the loop's finalizer (a task that a stopped loop drops).
        async with aclosing(http.aiter_bytes()) as pieces:
            async for data in pieces:
                for event, payload in decoder.feed(data):
                    for chunk in read(event, payload):
                        yield chunk
                    if turn.stopped:
                        break
                if turn.stopped:
                    break
        if not turn.stopped:
            for event, payload in decoder.flush():
                for chunk in read(event, payload):
                    yield chunk
                if turn.stopped:
                    break
        kept.raise_error(_body_error(client, http))
        yield turn.done()


def _wire_usage(turn: _Turn, usage: Any) -> Chunk:
    if usage.__class__ is not dict:
        raise BadEvent
    details = usage.get("output_tokens_details")
    if details is not None and details.__class__ is not dict:
        raise BadEvent
    server_tools = usage.get("server_tool_use")
    if server_tools is not None and server_tools.__class__ is not dict:
        raise BadEvent
    return turn.count(
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        usage.get("cache_creation_input_tokens"),
        usage.get("cache_read_input_tokens"),
        details.get("thinking_tokens") if details else None,
        server_tools.get("web_search_requests") if server_tools else None,
    )


class _FastReader:
    """``wire="fast"``: SSE events straight to chunks, with the SDK's Stream's filtering.

    An event that is not what :meth:`read` expects is read again the SDK's way (the SDK's
    model of it, then :func:`_sdk_event`), so a malformed event ends both wires alike.
    """

    __slots__ = ("client", "http", "turn")

    def __init__(
        self,
        client: anthropic.Anthropic | anthropic.AsyncAnthropic,
        http: httpx2.Response,
        turn: _Turn,
    ) -> None:
        self.client = client
        self.http = http
        self.turn = turn

    def read(self, event: str | None, payload: str) -> Sequence[Chunk]:
        """The chunks of one SSE event (as the SDK's ``Stream.__stream__`` filters them)."""
        if not event or event == "ping":  # the SDK's events are named; "" counts as none
            return ()
        if event == "error":
            self._raise_error(payload)
        if not payload:
            return ()
        data = json.loads(payload)
        try:
            if data.get("type") != "content_block_delta":
                return self._other(data)
            delta = data["delta"]
            index = data["index"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta["text"]
                if text.__class__ is not str or index.__class__ is not int:
                    raise BadEvent
                return (Chunk(_TEXT, text, index),) if text else ()
            if index.__class__ is not int:
                raise BadEvent
            if dtype == "input_json_delta":
                piece = delta["partial_json"]
                if piece.__class__ is not str:
                    raise BadEvent
                if piece and self.turn.blocks.get(index) == "tool_use":
                    return (Chunk(_TOOL_CALL, piece, index),)
                return ()
            if dtype == "thinking_delta":
                text = delta["thinking"]
                if text.__class__ is not str:
                    raise BadEvent
                return (Chunk(_THINKING, text, index),) if text else ()
            if dtype == "signature_delta":
                sig = delta["signature"]
                if sig.__class__ is not str:
                    raise BadEvent
                if sig:
                    return (Chunk(_THINKING, "", index, metadata={"signature": sig}),)
            return ()
        except READ_ERRORS:
            cast_to: Any = RawMessageStreamEvent
            model: Any = self.client._process_response_data(
                data=data, cast_to=cast_to, response=self.http
            )
            return _sdk_event(self.turn, model)

    def _other(self, data: Any) -> Sequence[Chunk]:
        """:meth:`read` for the events other than deltas (raises on what it does not expect)."""
        turn = self.turn
        kind = data.get("type")
        if kind == "content_block_start":
            block = data["content_block"]
            index = data["index"]
            if index.__class__ is not int or block.__class__ is not dict:
                raise BadEvent
            btype = block.get("type")
            if btype == "text":
                text = block["text"]
                if text.__class__ is not str:
                    raise BadEvent
                turn.blocks[index] = btype
                return (Chunk(_TEXT, text, index),) if text else ()
            if btype == "tool_use":
                call_id, name = block["id"], block["name"]
                if call_id.__class__ is not str or name.__class__ is not str:
                    raise BadEvent
                turn.blocks[index] = btype
                return (Chunk(_TOOL_CALL, "", index, id=call_id, name=name),)
            if btype == "thinking":
                text, sig = block["thinking"], block["signature"]
                if text.__class__ is not str or sig.__class__ is not str:
                    raise BadEvent
                turn.blocks[index] = btype
                out = [Chunk(_THINKING, text, index)] if text else []
                if sig:
                    out.append(Chunk(_THINKING, "", index, metadata={"signature": sig}))
                return out
            if btype == "redacted_thinking":
                redacted = block["data"]
                if redacted.__class__ is not str:
                    raise BadEvent
                turn.blocks[index] = btype
                return (Chunk(_THINKING, "", index, metadata={"redacted": redacted}),)
            turn.blocks[index] = btype
            return ()
        if kind == "message_delta":
            delta = data.get("delta")
            if delta is None:
                delta = {}
            elif delta.__class__ is not dict:
                raise BadEvent
            stop_reason, stop_sequence = delta.get("stop_reason"), delta.get("stop_sequence")
            if stop_reason is not None and stop_reason.__class__ is not str:
                raise BadEvent
            if stop_sequence is not None and stop_sequence.__class__ is not str:
                raise BadEvent
            usage = data.get("usage")
            chunk = _wire_usage(turn, {} if usage is None else usage)
            turn.stop_reason = stop_reason
            turn.stop_sequence = stop_sequence
            return (chunk,)
        if kind == "message_start":
            message = data["message"]
            response_id = message.get("id")
            if response_id is not None and response_id.__class__ is not str:
                raise BadEvent
            usage = message.get("usage")
            chunk = _wire_usage(turn, {} if usage is None else usage)
            turn.response_id = response_id
            return (chunk,)
        if kind == "message_stop":
            turn.stopped = True
        return ()

    def _raise_error(self, payload: str) -> None:
        """Raise an ``error`` event's exception exactly as the SDK's stream builds it."""
        body: object = payload
        try:
            body = json.loads(payload)
            message = f"{body}"
        except Exception:
            message = payload or f"Error code: {self.http.status_code}"
        raise self.client._make_status_error(message, body=body, response=self.http)


# -- non-streaming: a Message as the chunks a stream of it would give ----------------------


def _message_chunks(message: anthropic.types.Message) -> list[Chunk]:
    try:
        return list(_message_read(message))
    except READ_ERRORS as exc:
        raise malformed_event(PROVIDER, exc) from exc


def _message_read(message: anthropic.types.Message) -> Iterator[Chunk]:
    turn = _Turn()
    turn.response_id = message.id
    turn.stop_reason = message.stop_reason
    turn.stop_sequence = message.stop_sequence
    yield _sdk_usage(turn, message.usage)
    for index, block in enumerate(message.content):
        btype = block.type
        turn.blocks[index] = btype
        if block.type == "text":
            if block.text:
                yield Chunk(_TEXT, block.text, index)
        elif block.type == "thinking":
            if block.thinking:
                yield Chunk(_THINKING, block.thinking, index)
            if block.signature:
                yield Chunk(_THINKING, "", index, metadata={"signature": block.signature})
        elif block.type == "redacted_thinking":
            yield Chunk(_THINKING, "", index, metadata={"redacted": block.data})
        elif block.type == "tool_use":
            raw = json.dumps(block.input) if block.input else ""
            yield Chunk(_TOOL_CALL, raw, index, id=block.id, name=block.name)
    yield turn.done()
