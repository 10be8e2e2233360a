"""Anthropic Messages API: records → ``messages.create`` requests, stream events → chunks.

Two wire paths give the same chunks (tests/test_wire_anthropic.py checks it): the default
``wire="fast"`` lets the SDK build, authenticate, send and status-check the request
(``messages.with_streaming_response.create``) but decodes the SSE frames itself with
``json.loads`` and dict access, about 3.5x faster than the SDK's own iteration;
``wire="sdk"`` iterates the SDK's raw event stream (``messages.create(..., stream=True)``,
one pydantic model per event). Non-streaming calls always use the SDK's ``Message``.

Choices worth knowing:

- Usage: ``input_tokens`` is all input, ``input_tokens + cache_creation_input_tokens +
  cache_read_input_tokens`` (Anthropic's own definition of the total), so that, as for
  OpenAI and Gemini, ``cached_tokens`` (= ``cache_read_input_tokens``) is a part of it.
  ``output_tokens_details.thinking_tokens`` becomes ``reasoning_tokens``. message_delta
  counts are cumulative: a count it gives replaces the one from message_start, a count it
  leaves out keeps the earlier value; nothing is ever added.
- Server tools (``server_tool_use``, ``web_search_tool_result``, ...) run at Anthropic, so
  they make no TOOL_CALL chunks (the window must not run them) and are not sent back; the
  answer's text is kept. ``citations_delta`` events are dropped (the cited text is in the
  text deltas; citations themselves are not kept).
- A stream that ends without a ``stop_reason`` (no message_delta) was cut: it raises a
  retryable ``ProviderError`` (``error_type="incomplete_stream"``) instead of passing for a
  complete reply. A ``max_tokens`` stop inside a tool_use block is a complete reply whose
  tool call has unterminated arguments (``ToolCall.error`` says so).
- An in-stream ``error`` event (e.g. ``overloaded_error`` on HTTP 200) is classified by the
  error body's ``type``; ``status_code`` is then ``None`` (the HTTP status was 200).
- DONE metadata: ``anthropic_stop_sequence`` when a stop sequence matched.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ._sdk import missing_sdk

try:
    import anthropic
except ImportError as exc:  # an optional extra: name it
    raise missing_sdk("anthropic", "anthropic", exc) from exc
import httpx2

from ..chunks import Chunk, ChunkKind, Reply, Usage
from ..errors import ProviderError
from ..records import Record, RecordType
from ._common import (
    Lazy,
    Wire,
    check_wire,
    incomplete_stream,
    is_retryable_status,
    provider_error,
    transport_error,
)
from ._sse import SSEDecoder
from .base import Request, reply_from_chunks

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicModel", "build_messages"]

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` is required by the API; this is used unless params or the request say."""


# Error body types that may succeed when the same request is sent again.
_RETRYABLE_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})

_TEXT = ChunkKind.TEXT
_THINKING = ChunkKind.THINKING
_TOOL_CALL = ChunkKind.TOOL_CALL


class AnthropicModel:
    """Claude through the official ``anthropic`` SDK (sync and async).

    ::

        AnthropicModel("claude-sonnet-4-5", client=anthropic.Anthropic(...), temperature=0.2)

    ``params`` go into every request (``max_tokens``, ``temperature``, ``thinking``, extra
    server ``tools``...); ``Request.max_output_tokens`` and ``Request.options`` override
    them; keywords ``messages.create`` lacks (``temperature`` in anthropic 2.x) travel in
    ``extra_body``. Without ``client``/``async_client`` one is built from
    ``ANTHROPIC_API_KEY`` on first use of that path. ``wire="sdk"`` switches from the fast
    SSE decoder back to the SDK's event models.
    """

    def __init__(
        self,
        model_name: str,
        *,
        client: anthropic.Anthropic | None = None,
        async_client: anthropic.AsyncAnthropic | None = None,
        wire: Wire = "fast",
        **params: Any,
    ) -> None:
        self.model_name = model_name
        self.wire: Wire = check_wire(wire)
        self.params = dict(params)
        # The SDK's own retries are off: rxcontext retries itself (before the first chunk).
        self._client: Lazy[anthropic.Anthropic] = Lazy(
            lambda: anthropic.Anthropic(max_retries=0), client
        )
        self._async_client: Lazy[anthropic.AsyncAnthropic] = Lazy(
            lambda: anthropic.AsyncAnthropic(max_retries=0), async_client
        )

    @property
    def name(self) -> str:
        """``"anthropic:<model>"``."""
        return f"{PROVIDER}:{self.model_name}"

    def request_body(self, request: Request) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``request`` (without ``stream``)."""
        system, messages = build_messages(request.records)
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
        return _sdk_kwargs(body)

    # -- streaming ---------------------------------------------------------------------

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Stream ``request`` with the sync client; closing the generator closes the stream."""
        client = self._client.get()
        body = self.request_body(request)
        chunks = _fast_chunks(client, body) if self.wire == "fast" else _sdk_chunks(client, body)
        return _guard(chunks, _secrets(client))

    def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`iter_chunks`."""
        client = self._async_client.get()
        body = self.request_body(request)
        if self.wire == "fast":
            return _aguard(_afast_chunks(client, body), _secrets(client))
        return _aguard(_asdk_chunks(client, body), _secrets(client))

    # -- non-streaming -----------------------------------------------------------------

    def complete(self, request: Request) -> Reply:
        """One non-streaming ``messages.create`` call, reduced like a stream."""
        client = self._client.get()
        try:
            message = client.messages.create(**self.request_body(request))
        except Exception as exc:
            raise _classify(exc, _secrets(client)) from exc
        return reply_from_chunks(_message_chunks(message))

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        client = self._async_client.get()
        try:
            message = await client.messages.create(**self.request_body(request))
        except Exception as exc:
            raise _classify(exc, _secrets(client)) from exc
        return reply_from_chunks(_message_chunks(message))


# -- records → request ------------------------------------------------------------------


def build_messages(records: Iterable[Record]) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and ``messages`` for ``records``.

    A MODEL_RESP becomes its thinking blocks (from ``metadata["thinking_blocks"]``,
    unchanged and in order), then its text (if any); the TOOL_CALLs after it add
    ``tool_use`` blocks to the same assistant turn. TOOL_OUTPUTs become ``tool_result``
    blocks of a user turn. Consecutive turns of one role are merged, as the API requires.
    """
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for record in records:
        kind = record.type
        if kind is RecordType.SYSTEM_PROMPT:
            if record.content:
                system.append(record.content)
        elif kind is RecordType.PROMPT:
            if record.content:
                add("user", [{"type": "text", "text": record.content}])
        elif kind is RecordType.MODEL_RESP:
            blocks = _thinking_blocks(record.metadata)
            if record.content:
                blocks.append({"type": "text", "text": record.content})
            add("assistant", blocks)
        elif kind is RecordType.TOOL_CALL:
            block = {
                "type": "tool_use",
                "id": record.tool_call_id,
                "name": record.tool_name,
                "input": _tool_input(record.content),
            }
            add("assistant", [block])
        elif kind is RecordType.TOOL_OUTPUT:
            result = {
                "type": "tool_result",
                "tool_use_id": record.tool_call_id,
                "content": record.content,
            }
            add("user", [result])
    return "\n\n".join(system), messages


def _sdk_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """Move what ``messages.create`` has no keyword for (``temperature``, ``top_p``... in
    this SDK) into ``extra_body``, which the SDK merges into the JSON it sends."""
    global _CREATE_KEYWORDS
    if _CREATE_KEYWORDS is None:
        _CREATE_KEYWORDS = frozenset(
            inspect.signature(anthropic.resources.messages.Messages.create).parameters
        ) - {"self"}
    extra = {k: body.pop(k) for k in [k for k in body if k not in _CREATE_KEYWORDS]}
    if extra:
        body["extra_body"] = {**extra, **(body.get("extra_body") or {})}
    return body


_CREATE_KEYWORDS: frozenset[str] | None = None


def _thinking_blocks(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = metadata.get("thinking_blocks") or ()
    return [
        dict(b)
        for b in blocks
        if isinstance(b, Mapping) and b.get("type") in ("thinking", "redacted_thinking")
    ]


def _tool_input(raw: str) -> Any:
    # A call whose arguments were cut (max_tokens) cannot be sent back as written; the
    # API needs an object, so it goes back empty.
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


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
    if isinstance(exc, anthropic.APIStatusError):
        return _error_from_body(exc.status_code, exc.body, exc.response.headers, secrets)
    if isinstance(exc, anthropic.APITimeoutError):
        return provider_error(
            PROVIDER, f"timeout: {exc}", error_type="timeout", retryable=True, secrets=secrets
        )
    if isinstance(exc, anthropic.APIConnectionError):
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
    if isinstance(exc, json.JSONDecodeError):
        return provider_error(
            PROVIDER,
            f"a stream event is not valid JSON: {exc}",
            error_type="invalid_json",
            retryable=False,
            secrets=secrets,
        )
    err = transport_error(exc, PROVIDER)
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
        "thinking",
    )

    def __init__(self, secrets: tuple[str | None, ...] = ()) -> None:
        self.secrets = secrets
        self.blocks: dict[int, str] = {}
        self.response_id: str | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.input: int | None = None
        self.output: int | None = None
        self.cache_write: int | None = None
        self.cache_read: int | None = None
        self.thinking: int | None = None

    def count(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_write: int | None,
        cache_read: int | None,
        thinking: int | None,
    ) -> Chunk:
        """Take the cumulative counts given (None keeps the earlier one); a USAGE chunk."""
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
        return Chunk(ChunkKind.USAGE, usage=self.usage())

    def usage(self) -> Usage:
        """Totals so far."""
        return Usage.of(
            input_tokens=(self.input or 0) + (self.cache_write or 0) + (self.cache_read or 0),
            output_tokens=self.output,
            cached_tokens=self.cache_read,
            reasoning_tokens=self.thinking,
        )

    def done(self) -> Chunk:
        """The final DONE chunk; raises if the message never stopped."""
        if self.stop_reason is None:
            raise _incomplete()
        has_usage = self.input is not None or self.output is not None
        return Chunk(
            ChunkKind.DONE,
            finish_reason=self.stop_reason,
            response_id=self.response_id,
            usage=self.usage() if has_usage else None,
            metadata={"anthropic_stop_sequence": self.stop_sequence} if self.stop_sequence else {},
        )


# -- wire="sdk": the SDK's event models ---------------------------------------------------


def _sdk_chunks(client: anthropic.Anthropic, body: dict[str, Any]) -> Iterator[Chunk]:
    stream = client.messages.create(**body, stream=True)
    try:
        turn = _Turn()
        for event in stream:
            yield from _sdk_event(turn, event)
        yield turn.done()
    finally:
        stream.close()


async def _asdk_chunks(
    client: anthropic.AsyncAnthropic, body: dict[str, Any]
) -> AsyncGenerator[Chunk, None]:
    stream = await client.messages.create(**body, stream=True)
    try:
        turn = _Turn()
        async for event in stream:
            for chunk in _sdk_event(turn, event):
                yield chunk
        yield turn.done()
    finally:
        await stream.close()


def _sdk_usage(turn: _Turn, usage: Any) -> Chunk:
    details = getattr(usage, "output_tokens_details", None)
    return turn.count(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
        getattr(details, "thinking_tokens", None),
    )


def _sdk_event(turn: _Turn, event: Any) -> list[Chunk]:
    kind = event.type
    if kind == "content_block_delta":
        delta = event.delta
        index = event.index
        dtype = delta.type
        if dtype == "text_delta":
            return [Chunk(_TEXT, delta.text, index)] if delta.text else []
        if dtype == "input_json_delta":
            if delta.partial_json and turn.blocks.get(index) == "tool_use":
                return [Chunk(_TOOL_CALL, delta.partial_json, index)]
            return []
        if dtype == "thinking_delta":
            return [Chunk(_THINKING, delta.thinking, index)] if delta.thinking else []
        if dtype == "signature_delta" and delta.signature:
            return [Chunk(_THINKING, "", index, metadata={"signature": delta.signature})]
        return []
    if kind == "content_block_start":
        block = event.content_block
        index = event.index
        btype = block.type
        turn.blocks[index] = btype
        if btype == "text":
            return [Chunk(_TEXT, block.text, index)] if block.text else []
        if btype == "tool_use":
            return [Chunk(_TOOL_CALL, "", index, id=block.id, name=block.name)]
        if btype == "thinking":
            out = [Chunk(_THINKING, block.thinking, index)] if block.thinking else []
            if block.signature:
                out.append(Chunk(_THINKING, "", index, metadata={"signature": block.signature}))
            return out
        if btype == "redacted_thinking":
            return [Chunk(_THINKING, "", index, metadata={"redacted": block.data})]
        return []
    if kind == "message_delta":
        turn.stop_reason = event.delta.stop_reason
        turn.stop_sequence = event.delta.stop_sequence
        return [_sdk_usage(turn, event.usage)]
    if kind == "message_start":
        turn.response_id = event.message.id
        return [_sdk_usage(turn, event.message.usage)]
    return []


# -- wire="fast": SSE frames straight to chunks --------------------------------------------


def _fast_chunks(client: anthropic.Anthropic, body: dict[str, Any]) -> Iterator[Chunk]:
    # The SDK builds, authenticates and sends the request and raises HTTP errors on entry.
    with client.messages.with_streaming_response.create(**body, stream=True) as response:
        http = response.http_response
        decoder = SSEDecoder()
        turn = _Turn(_secrets(client))
        for data in http.iter_bytes():
            for event, payload in decoder.feed(data):
                yield from _wire_event(turn, event, payload, http)
        for event, payload in decoder.flush():
            yield from _wire_event(turn, event, payload, http)
        yield turn.done()


async def _afast_chunks(
    client: anthropic.AsyncAnthropic, body: dict[str, Any]
) -> AsyncGenerator[Chunk, None]:
    async with client.messages.with_streaming_response.create(**body, stream=True) as response:
        http = response.http_response
        decoder = SSEDecoder()
        turn = _Turn(_secrets(client))
        async for data in http.aiter_bytes():
            for event, payload in decoder.feed(data):
                for chunk in _wire_event(turn, event, payload, http):
                    yield chunk
        for event, payload in decoder.flush():
            for chunk in _wire_event(turn, event, payload, http):
                yield chunk
        yield turn.done()


def _wire_usage(turn: _Turn, usage: Mapping[str, Any]) -> Chunk:
    details = usage.get("output_tokens_details")
    return turn.count(
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        usage.get("cache_creation_input_tokens"),
        usage.get("cache_read_input_tokens"),
        details.get("thinking_tokens") if details else None,
    )


def _wire_event(
    turn: _Turn, event: str | None, payload: str, http: httpx2.Response
) -> Sequence[Chunk]:
    # The same filtering as the SDK's Stream: unnamed events and pings are skipped, an
    # `error` event raises, an empty data line is skipped, the rest go by their JSON type.
    if event is None or event == "ping":
        return ()
    if event == "error":
        try:
            body: object = json.loads(payload)
        except ValueError:
            body = payload or None
        raise _error_from_body(http.status_code, body, http.headers, turn.secrets)
    if not payload:
        return ()
    data = json.loads(payload)
    kind = data.get("type")
    if kind == "content_block_delta":
        delta = data["delta"]
        index = data["index"]
        dtype = delta.get("type")
        if dtype == "text_delta":
            text = delta["text"]
            return (Chunk(_TEXT, text, index),) if text else ()
        if dtype == "input_json_delta":
            piece = delta["partial_json"]
            if piece and turn.blocks.get(index) == "tool_use":
                return (Chunk(_TOOL_CALL, piece, index),)
            return ()
        if dtype == "thinking_delta":
            text = delta["thinking"]
            return (Chunk(_THINKING, text, index),) if text else ()
        if dtype == "signature_delta":
            sig = delta["signature"]
            if sig:
                return (Chunk(_THINKING, "", index, metadata={"signature": sig}),)
        return ()
    if kind == "content_block_start":
        block = data["content_block"]
        index = data["index"]
        btype = block.get("type")
        turn.blocks[index] = btype
        if btype == "text":
            text = block.get("text")
            return (Chunk(_TEXT, text, index),) if text else ()
        if btype == "tool_use":
            return (Chunk(_TOOL_CALL, "", index, id=block["id"], name=block["name"]),)
        if btype == "thinking":
            out = [Chunk(_THINKING, block["thinking"], index)] if block.get("thinking") else []
            if block.get("signature"):
                out.append(Chunk(_THINKING, "", index, metadata={"signature": block["signature"]}))
            return out
        if btype == "redacted_thinking":
            return (Chunk(_THINKING, "", index, metadata={"redacted": block["data"]}),)
        return ()
    if kind == "message_delta":
        delta = data.get("delta") or {}
        turn.stop_reason = delta.get("stop_reason")
        turn.stop_sequence = delta.get("stop_sequence")
        return (_wire_usage(turn, data.get("usage") or {}),)
    if kind == "message_start":
        message = data["message"]
        turn.response_id = message.get("id")
        return (_wire_usage(turn, message.get("usage") or {}),)
    return ()


# -- non-streaming: a Message as the chunks a stream of it would give ----------------------


def _message_chunks(message: anthropic.types.Message) -> Iterator[Chunk]:
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
