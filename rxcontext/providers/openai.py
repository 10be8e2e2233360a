"""OpenAI models: :class:`OpenAIModel` (Chat Completions), :class:`OpenAIResponsesModel`.

Both stream through the ``openai`` SDK. With ``wire="fast"`` (the default) the SDK builds,
authenticates and sends the request and raises its HTTP errors, but the SSE frames are
parsed here with ``json.loads`` (about 10-20x faster than the SDK's per-event pydantic
models); ``wire="sdk"`` lets the SDK parse every event. On both, the history (``messages``,
``input``) goes into the SDK's body already encoded, each record once (:mod:`._history`).
The two wires give the same chunks and errors (tests/test_wire_openai.py checks it). The
mapping itself (records → request, events → chunks) lives in :mod:`._openai_chat` and
:mod:`._openai_responses`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import httpx2

from ._sdk import missing_sdk

try:
    import openai
    from openai.types.chat import ChatCompletionChunk
    from openai.types.responses import ResponseStreamEvent
except ImportError as exc:  # an optional extra: name it
    raise missing_sdk("openai", "openai", exc) from exc

from .._optional_nulls import nullable_optionals
from ..attachments import Attachment
from ..chunks import Chunk, Reply
from ..errors import ProviderError
from ..records import Checkpoint
from ._abort import noted
from ._attachments import check as check_attachments
from ._common import (
    PLACEHOLDER_KEY,
    READ_ERRORS,
    Lazy,
    Wire,
    check_wire,
    malformed_event,
    mask_chain,
    provider_error,
    refused_request,
    sent_secrets,
    transport_error,
)
from ._error_body import tap
from ._extra import MODEL, STREAM, refuse_keys, refused_history, refused_system, with_tools
from ._openai_chat import (
    PROVIDER,
    REASONING_FIELD,
    ChatHistory,
    ChatStream,
    chat_messages,
    completion_chunks,
    in_stream_error,
)
from ._openai_request import chat_client, responses_client, splicing
from ._openai_responses import (
    BACKGROUND,
    OUTPUT_KEY,
    ResponsesHistory,
    ResponsesStream,
    background_point,
    response_chunks,
    responses_input,
)
from ._options import chat_options, responses_options, split_extra
from ._sse import aiter_sse, iter_sse
from ._stainless import HISTORY
from .base import Request, ResumeCursor, reply_from_chunks

try:  # the SDK's own strict-schema transform (what its .parse() helpers send)
    from openai.lib._pydantic import _ensure_strict_json_schema
except ImportError:  # pragma: no cover - an SDK without it: send the schema as given
    _ensure_strict_json_schema = None  # type: ignore[assignment]

__all__ = ["OUTPUT_KEY", "REASONING_FIELD", "OpenAIModel", "OpenAIResponsesModel"]


_ERRORS = (openai.OpenAIError, httpx2.TransportError, json.JSONDecodeError, UnicodeDecodeError)
_HINTS = {
    401: "check the API key (OPENAI_API_KEY)",
    403: "the key has no access to this model or endpoint",
    404: "check the model name and the client's base_url",
    429: "rate limited or out of quota; retry after retry_after seconds",
}


def _error(exc: BaseException, secrets: tuple[str | None, ...]) -> ProviderError:
    """Classify an SDK / transport / decode exception as a :class:`ProviderError`."""
    secrets = sent_secrets(exc, secrets)
    if isinstance(exc, openai.APIError):
        # The SDK's message may quote the request's key back (a 401): mask it in the
        # exception that becomes our __cause__, too.
        mask_chain(exc, secrets)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        hint = _HINTS.get(status, "the server failed; retry" if status >= 500 else "")
        return provider_error(
            PROVIDER,
            f"HTTP {status}: {exc.message}" + (f" ({hint})" if hint else ""),
            status_code=status,
            error_type=exc.type or exc.code,
            headers=exc.response.headers,
            secrets=secrets,
        )
    if isinstance(exc, openai.APIConnectionError):
        refused = refused_request(exc, PROVIDER, secrets)
        if refused is not None:
            return refused
        timeout = isinstance(exc, openai.APITimeoutError)
        cause = exc.__cause__
        detail = (str(cause) or type(cause).__name__) if cause is not None else exc.message
        kind = "timeout" if timeout else "connection_error"
        return provider_error(
            PROVIDER,
            f"{kind}: {detail} (check the network and base_url, then retry)",
            error_type=kind,
            retryable=True,
            secrets=secrets,
        )
    if isinstance(exc, openai.APIError):
        return in_stream_error(exc.message, exc.body, secrets)
    transport = transport_error(exc, PROVIDER, secrets)
    if transport is not None:
        return transport
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        # Raised by the SDK's stream (wire="sdk") or by our decoder (wire="fast") alike.
        return malformed_event(PROVIDER, exc, secrets=secrets)
    return provider_error(PROVIDER, str(exc) or type(exc).__name__, secrets=secrets)


_C = TypeVar("_C", openai.OpenAI, openai.AsyncOpenAI)


def _env_client(cls: type[_C]) -> _C:
    """A client from ``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``).

    ``OPENAI_BASE_URL`` alone (a local OpenAI-compatible server, which takes no key) gets a
    placeholder key, as the CLI's client does. The SDK's own retries are off: rxcontext
    retries itself, before the first chunk only, and the two would multiply.
    """
    # Name the client this path uses: a user who passed the other one has it already.
    sync = cls is openai.OpenAI
    parameter = "client=openai.OpenAI" if sync else "async_client=openai.AsyncOpenAI"
    local = not os.environ.get("OPENAI_API_KEY") and os.environ.get("OPENAI_BASE_URL")
    try:
        return cls(max_retries=0, api_key=PLACEHOLDER_KEY) if local else cls(max_retries=0)
    except openai.OpenAIError as exc:
        raise ProviderError(
            f"{PROVIDER}: no API key: set OPENAI_API_KEY, or pass {parameter}(...)",
            provider=PROVIDER,
            error_type="configuration",
        ) from exc


def _keys(client: openai.OpenAI | openai.AsyncOpenAI | None) -> tuple[str | None, ...]:
    """The key ``client`` holds now. With a key provider (``api_key=<callable>``) the SDK asks
    it per request and keeps the last answer here, so it is read when an error is classified,
    not before the request (when it is ``""`` or an older key)."""
    return (client.api_key,) if client is not None else ()


class _Converting:
    """Re-raises SDK, transport and decode errors as :class:`ProviderError` (``from`` them),
    masking ``client``'s key as it is when they are raised."""

    __slots__ = ("client",)

    def __init__(self, client: openai.OpenAI | openai.AsyncOpenAI | None) -> None:
        self.client = client

    def __enter__(self) -> _Converting:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, _ERRORS):
            raise _error(exc, _keys(self.client)) from exc


def _sdk_event(
    client: openai.OpenAI | openai.AsyncOpenAI, cast_to: Any, raw: Any
) -> Callable[[Any], Any]:
    """What the SDK's stream yields for one decoded event: its model, built as it builds it.

    The fast readers read an event this way when it is not what they expect, so a malformed
    event ends both wires alike.
    """
    process = client._process_response_data
    response = raw.http_response

    def model(data: Any) -> Any:
        return process(data=data, cast_to=cast_to, response=response)

    return model


def _event_data(data: str, request: httpx2.Request) -> Any:
    """Decode one SSE event's data as the SDK does, raising an ``{"error": ...}`` payload.

    The error is raised as the SDK's own ``APIError`` so both paths classify it alike.
    """
    payload = json.loads(data)
    if isinstance(payload, dict):
        error = payload.get("error")
        if error:
            raise _error_event(error, request)
    return payload


def _error_event(error: Any, request: httpx2.Request) -> openai.APIError:
    """The SDK's ``APIError`` for an ``{"error": error}`` payload, as its stream builds it."""
    message = error.get("message") if isinstance(error, Mapping) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)


def _events(raw: openai.APIResponse[Any]) -> Iterator[Any]:
    """The decoded events of a raw SSE response, up to ``[DONE]``.

    Transport errors are wrapped as the SDK's ``Stream`` wraps them, so both wires raise
    the same exceptions.
    """
    request = raw.http_response.request
    try:
        for _, data in iter_sse(raw.iter_bytes()):
            if data.startswith("[DONE]"):
                return
            yield _event_data(data, request)
    except httpx2.TimeoutException as err:
        raise openai.APITimeoutError(request) from err
    except httpx2.RequestError as err:
        raise openai.APIConnectionError(request=request) from err


async def _aevents(raw: openai.AsyncAPIResponse[Any]) -> AsyncGenerator[Any, None]:
    """The asyncio twin of :func:`_events`."""
    request = raw.http_response.request
    try:
        # Closed here, not left for the loop's finalizer (a task that a stopped loop drops);
        # httpx2's own iterator (the SDK's ``iter_bytes`` wraps it and would leave it open).
        pieces = raw.http_response.aiter_bytes()
        async with aclosing(pieces), aclosing(aiter_sse(pieces)) as events:
            async for _, data in events:
                if data.startswith("[DONE]"):
                    return
                yield _event_data(data, request)
    except httpx2.TimeoutException as err:
        raise openai.APITimeoutError(request) from err
    except httpx2.RequestError as err:
        raise openai.APIConnectionError(request=request) from err


def _body_error(response: httpx2.Response) -> Callable[[Any], BaseException]:
    """How a JSON error body sent in place of ``response``'s stream is raised (see
    :meth:`BodyTap.raise_error`): as an error event in the stream is."""
    return lambda body: _error_event(body["error"], response.request)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as OpenAI's strict mode wants it (every object closed, every property
    required), made by the SDK's own helper on a copy.

    A property the schema leaves optional is made nullable first (OpenAI's documented way to
    keep a field optional in strict mode), else the model would have to invent a value for
    it; the reply's nulls there are dropped before validation (``schema_optional_as_null``).
    """
    if _ensure_strict_json_schema is None:  # pragma: no cover
        return schema
    copy = nullable_optionals(json.loads(json.dumps(schema)))
    return dict(_ensure_strict_json_schema(copy, path=(), root=copy))


_CHAT_REFUSED = {"model": MODEL, "messages": refused_history("messages"), "stream": STREAM}
_RESPONSES_REFUSED = {
    "model": MODEL,
    "input": refused_history("input"),
    "stream": STREAM,
    "previous_response_id": "rxcontext sets it (set_server_side_threading(True))",
}
_RESPONSES_EXTRA_REFUSED = {**_RESPONSES_REFUSED, "instructions": refused_system("instructions")}
"""A call's ``extra`` may not set ``instructions`` either (a constructor one is the default
of a window without a system prompt)."""


class _OpenAIBase:
    """Client handling shared by both OpenAI models."""

    _label = "openai"
    schema_optional_as_null: ClassVar[bool] = True
    """A structured-output schema goes out strict, its optional properties required but
    nullable: a null in one of them in the reply stands for the key left out."""
    _history_type: Callable[[], Any]
    _settings_refused: ClassVar[Mapping[str, str]]
    """Constructor settings refused (what rxcontext sets itself), with why."""
    _extra_refused: ClassVar[Mapping[str, str]]
    """Keys of a call's ``extra`` refused (those of the settings and more), with why."""

    def __init__(
        self,
        model_name: str,
        *,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
        wire: Wire = "fast",
        context_window: int | None = None,
        **params: Any,
    ) -> None:
        self.model_name = model_name
        self.wire: Wire = check_wire(wire)
        self.context_window = context_window
        """The model's context size in tokens, if given: a window's default ``max_tokens``."""
        self.params = dict(params)
        """Extra request parameters sent with every call (``Request.options`` override them)."""
        refuse_keys(self.params, self._settings_refused, model=self.name, per_call=False)
        self._client: Lazy[openai.OpenAI] = Lazy(lambda: _env_client(openai.OpenAI), client)
        self._async_client: Lazy[openai.AsyncOpenAI] = Lazy(
            lambda: _env_client(openai.AsyncOpenAI), async_client
        )
        self._history = self._history_type()

    @property
    def name(self) -> str:
        """``"openai:<model>"`` (``"openai-responses:<model>"`` for the Responses API)."""
        return f"{self._label}:{self.model_name}"

    def check_attachments(self, attachments: Sequence[Attachment]) -> None:
        """Raise :class:`~rxcontext.UnsupportedAttachment` for an attachment this model's
        API does not take (``ContextWindow.add_prompt`` asks before storing the prompt)."""
        check_attachments(self._label, attachments)

    def check_extra(self, extra: Mapping[str, Any], tools: bool) -> None:
        """Raise :class:`~rxcontext.UnsupportedOption` for a key of a call's ``extra`` that
        this model sets itself (``tools``: whether the call offers the window's tools)."""
        refuse_keys(extra, with_tools(self._extra_refused, tools), model=self.name, per_call=True)

    def _sync(self) -> openai.OpenAI:
        with _Converting(None):
            return self._client.get()

    def _async(self) -> openai.AsyncOpenAI:
        with _Converting(None):
            return self._async_client.get()


class OpenAIModel(_OpenAIBase):
    """A Chat Completions model (api.openai.com or any OpenAI-compatible server).

    ::

        OpenAIModel("gpt-4o-mini", temperature=0)
        OpenAIModel("llama-3.3-70b", client=openai.OpenAI(base_url=..., api_key=...))

    ``params`` (``temperature``, ``reasoning_effort``, ``extra_body``...) go into every
    request. Streams ask for ``stream_options.include_usage`` so the last event has usage.

    Reasoning that a server streams as ``reasoning_content`` (DeepSeek, Kimi, vLLM) or
    ``reasoning`` (OpenRouter, Groq) becomes the reply's thinking. Only the first goes back,
    in the same field on the reply's assistant message: DeepSeek's thinking mode refuses a
    tool loop without it. The reply's metadata says where it came from (``REASONING_FIELD``).
    """

    _history: ChatHistory
    _history_type = ChatHistory
    _settings_refused = _extra_refused = _CHAT_REFUSED
    call_options = frozenset(
        {"temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema"}
    )
    """Per-call options this model sends (see :data:`rxcontext.options.PROVIDER_PARAMETERS`)."""

    def _kwargs(self, request: Request, messages: Any = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model_name}
        if request.max_output_tokens is not None:
            kwargs["max_completion_tokens"] = request.max_output_tokens
        kwargs.update(self.params)
        kwargs.update(request.options)
        call = request.call
        if call.max_output_tokens is not None:
            kwargs.pop("max_tokens", None)  # the older name of the same limit
        kwargs.update(chat_options(call, _strict))
        kwargs["messages"] = chat_messages(request.records) if messages is None else messages
        if request.tools:
            kwargs["tools"] = [tool.to_openai_chat() for tool in request.tools]
        if call.extra:
            kwargs.update(call.extra)
            split_extra(kwargs, openai.resources.chat.completions.Completions.create)
        return kwargs

    def _prepared(self, client: _C, request: Request, *, stream: bool) -> tuple[_C, dict[str, Any]]:
        """The client to call and the ``chat.completions.create`` arguments for ``request``.

        A plain client gets the history already encoded, spliced into the body by a stand-in
        (see :mod:`._history`); others get the messages as dicts.
        """
        if splicing(client):
            client = chat_client(client, self._history.encode(request.records))
            kwargs = self._kwargs(request, HISTORY)
        else:
            kwargs = self._kwargs(request)
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {**kwargs.get("stream_options", {}), "include_usage": True}
        return client, kwargs

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Stream ``request`` on this thread; closing the generator closes the HTTP stream."""
        client = self._sync()
        client, kwargs = self._prepared(client, request, stream=True)
        state = ChatStream()
        with _Converting(client):
            if self.wire == "fast":
                with (
                    client.chat.completions.with_streaming_response.create(**kwargs) as raw,
                    noted(raw.http_response),
                ):
                    kept = tap(raw.http_response)
                    state.sdk_event = _sdk_event(client, ChatCompletionChunk, raw)
                    for data in _events(raw):
                        yield from state.fast(data)
                    kept.raise_error(_body_error(raw.http_response))
            else:
                with client.chat.completions.create(**kwargs) as stream, noted(stream.response):
                    kept = tap(stream.response)
                    for chunk in stream:
                        yield from state.sdk(chunk)
                    kept.raise_error(_body_error(stream.response))
        yield state.done()

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`iter_chunks`."""
        client = self._async()
        client, kwargs = self._prepared(client, request, stream=True)
        state = ChatStream()
        with _Converting(client):
            if self.wire == "fast":
                async with (
                    client.chat.completions.with_streaming_response.create(**kwargs) as raw,
                    aclosing(_aevents(raw)) as events,
                ):
                    kept = tap(raw.http_response)
                    state.sdk_event = _sdk_event(client, ChatCompletionChunk, raw)
                    async for data in events:
                        for chunk in state.fast(data):
                            yield chunk
                    kept.raise_error(_body_error(raw.http_response))
            else:
                async with await client.chat.completions.create(**kwargs) as stream:
                    kept = tap(stream.response)
                    async for sdk_chunk in stream:
                        for chunk in state.sdk(sdk_chunk):
                            yield chunk
                    kept.raise_error(_body_error(stream.response))
        yield state.done()

    def complete(self, request: Request) -> Reply:
        """One non-streaming call; the :class:`Reply` streaming would reduce to."""
        client = self._sync()
        with _Converting(client):
            client, kwargs = self._prepared(client, request, stream=False)
            completion = client.chat.completions.create(**kwargs)
        return _read_whole(completion_chunks, completion, _keys(client))

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        client = self._async()
        with _Converting(client):
            client, kwargs = self._prepared(client, request, stream=False)
            completion = await client.chat.completions.create(**kwargs)
        return _read_whole(completion_chunks, completion, _keys(client))


def _bind(state: ResponsesStream, client: openai.OpenAI | openai.AsyncOpenAI, raw: Any) -> None:
    """Give a fast-path Responses reader the SDK's event model and the stream's request."""
    state.sdk_event = _sdk_event(client, ResponseStreamEvent, raw)
    state.request = raw.http_response.request


def _read_whole(
    read: Callable[[Any], list[Chunk]], whole: Any, secrets: tuple[str | None, ...]
) -> Reply:
    """The reply of a non-streaming call; a malformed one raises ``ProviderError``."""
    try:
        chunks = read(whole)
    except READ_ERRORS as exc:
        raise malformed_event(PROVIDER, exc, secrets=secrets) from exc
    return reply_from_chunks(chunks)


class OpenAIResponsesModel(_OpenAIBase):
    """A Responses API model.

    ::

        OpenAIResponsesModel("gpt-5-mini", reasoning={"effort": "low"})

    Leading system prompts are sent as ``instructions``. Reasoning items, message ids and
    phases are kept in the reply's metadata (``OUTPUT_KEY``) and sent back on the next turn;
    with ``store=False`` pass ``include=["reasoning.encrypted_content"]`` so reasoning can
    round-trip. ``Request.previous_response_id`` threads on the server: only the records
    given are sent.

    With ``background=True`` (which needs the default ``store=True``) the response runs on the
    server whatever happens to the connection, and an interrupted reply resumes natively:
    ``cw.resume(id)`` streams the rest of the same response (:meth:`resume_chunks`) instead
    of asking the model to continue.
    """

    _label = "openai-responses"
    supports_previous_response_id = True
    """The window may send ``previous_response_id`` with only the new input."""

    _history: ResponsesHistory
    _history_type = ResponsesHistory
    _settings_refused = _RESPONSES_REFUSED
    _extra_refused = _RESPONSES_EXTRA_REFUSED
    call_options = frozenset({"temperature", "max_output_tokens", "tool_choice", "extra", "schema"})
    """Per-call options this model sends; the Responses API has no ``stop``."""

    def _kwargs(self, request: Request, instructions: str | None, items: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model_name}
        if request.max_output_tokens is not None:
            kwargs["max_output_tokens"] = request.max_output_tokens
        kwargs.update(self.params)
        kwargs.update(request.options)
        call = request.call
        kwargs.update(responses_options(call, _strict, kwargs))
        if instructions is not None:
            kwargs["instructions"] = instructions
        kwargs["input"] = items
        if request.tools:
            kwargs["tools"] = [tool.to_openai_responses() for tool in request.tools]
        if request.previous_response_id:
            kwargs["previous_response_id"] = request.previous_response_id
        if call.extra:
            kwargs.update(call.extra)
            split_extra(kwargs, openai.resources.responses.Responses.create)
        return kwargs

    def _prepared(self, client: _C, request: Request, *, stream: bool) -> tuple[_C, dict[str, Any]]:
        """The client to call and the ``responses.create`` arguments for ``request``.

        A plain client gets the input already encoded, spliced into the body by a stand-in
        (see :mod:`._history`); others get the input items as dicts.
        """
        if splicing(client):
            instructions, history = self._history.encode(request.records)
            client = responses_client(client, history)
            kwargs = self._kwargs(request, instructions, HISTORY)
        else:
            kwargs = self._kwargs(request, *responses_input(request.records))
        if stream:
            kwargs["stream"] = True
        return client, kwargs

    def _stream_state(
        self,
        kwargs: Mapping[str, Any],
        secrets: tuple[str | None, ...],
        cursor: ResumeCursor | None,
        resumed: Checkpoint | None = None,
    ) -> ResponsesStream:
        # Only a background response can be retrieved again mid-stream, so only then is the
        # stream's position noted (and the plain loop, with no per-event noting, used otherwise).
        if cursor is not None:
            cursor.begin(BACKGROUND)
            if not kwargs.get("background") and resumed is None:
                cursor = None
        return ResponsesStream(secrets, cursor, resumed=resumed)

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Stream ``request`` on this thread; closing the generator closes the HTTP stream.

        With ``background=True`` the stream's response id and the sequence number of each
        delivered event are noted in ``request.cursor``, so an interrupted reply can be
        resumed with :meth:`resume_chunks`.
        """
        client = self._sync()
        secrets = _keys(client)
        client, kwargs = self._prepared(client, request, stream=True)
        state = self._stream_state(kwargs, secrets, request.cursor)
        with _Converting(client):
            if self.wire == "fast":
                fast = state.fast if state.cursor is None else state.fast_at
                with (
                    client.responses.with_streaming_response.create(**kwargs) as raw,
                    noted(raw.http_response),
                ):
                    kept = tap(raw.http_response)
                    _bind(state, client, raw)
                    for data in _events(raw):
                        yield from fast(data)
                        if state.finished:
                            break
                    kept.raise_error(_body_error(raw.http_response))
            else:
                sdk = state.sdk if state.cursor is None else state.sdk_at
                with client.responses.create(**kwargs) as stream, noted(stream.response):
                    state.request = stream.response.request
                    kept = tap(stream.response)
                    for sdk_event in stream:
                        yield from sdk(sdk_event)
                        if state.finished:
                            break
                    kept.raise_error(_body_error(stream.response))
        state.end()

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`iter_chunks`."""
        client = self._async()
        secrets = _keys(client)
        client, kwargs = self._prepared(client, request, stream=True)
        state = self._stream_state(kwargs, secrets, request.cursor)
        with _Converting(client):
            if self.wire == "fast":
                fast = state.fast if state.cursor is None else state.fast_at
                async with (
                    client.responses.with_streaming_response.create(**kwargs) as raw,
                    aclosing(_aevents(raw)) as events,
                ):
                    kept = tap(raw.http_response)
                    _bind(state, client, raw)
                    async for data in events:
                        for chunk in fast(data):
                            yield chunk
                        if state.finished:
                            break
                    kept.raise_error(_body_error(raw.http_response))
            else:
                sdk = state.sdk if state.cursor is None else state.sdk_at
                async with await client.responses.create(**kwargs) as stream:
                    state.request = stream.response.request
                    kept = tap(stream.response)
                    async for sdk_event in stream:
                        for chunk in sdk(sdk_event):
                            yield chunk
                        if state.finished:
                            break
                    kept.raise_error(_body_error(stream.response))
        state.end()

    # -- native resume (background mode) --------------------------------------------------

    def resume_chunks(
        self, checkpoint: Checkpoint, cursor: ResumeCursor | None = None
    ) -> Iterator[Chunk] | None:
        """The rest of ``checkpoint``'s background response, or None if it cannot be resumed.

        Streams ``GET /responses/{id}?stream=true&starting_after=<n>`` (the SDK's
        ``responses.retrieve``), where ``n`` is the sequence number of the last event whose
        chunks were delivered: the chunks continue the checkpoint's text exactly. None when
        the checkpoint holds no such point (the reply was not made with ``background=True``,
        or was cut before its response id arrived): the window then continues with a prompt.
        """
        point = background_point(checkpoint)
        if point is None:
            return None
        return self._resume(checkpoint, point, cursor)

    def aresume_chunks(
        self, checkpoint: Checkpoint, cursor: ResumeCursor | None = None
    ) -> AsyncIterator[Chunk] | None:
        """The asyncio twin of :meth:`resume_chunks`."""
        point = background_point(checkpoint)
        if point is None:
            return None
        return self._aresume(checkpoint, point, cursor)

    def _resume(
        self, checkpoint: Checkpoint, point: tuple[str, int], cursor: ResumeCursor | None
    ) -> Iterator[Chunk]:
        client = self._sync()
        secrets = _keys(client)
        response_id, after = point
        cursor = cursor if cursor is not None else ResumeCursor()
        state = self._stream_state({}, secrets, cursor, checkpoint)
        cursor.started(response_id, after)
        with _Converting(client):
            if self.wire == "fast":
                with (
                    client.responses.with_streaming_response.retrieve(
                        response_id, stream=True, starting_after=after
                    ) as raw,
                    noted(raw.http_response),
                ):
                    kept = tap(raw.http_response)
                    _bind(state, client, raw)
                    for data in _events(raw):
                        yield from state.fast_at(data)
                        if state.finished:
                            break
                    kept.raise_error(_body_error(raw.http_response))
            else:
                with (
                    client.responses.retrieve(
                        response_id, stream=True, starting_after=after
                    ) as stream,
                    noted(stream.response),
                ):
                    state.request = stream.response.request
                    kept = tap(stream.response)
                    for sdk_event in stream:
                        yield from state.sdk_at(sdk_event)
                        if state.finished:
                            break
                    kept.raise_error(_body_error(stream.response))
        state.end()

    async def _aresume(
        self, checkpoint: Checkpoint, point: tuple[str, int], cursor: ResumeCursor | None
    ) -> AsyncIterator[Chunk]:
        client = self._async()
        secrets = _keys(client)
        response_id, after = point
        cursor = cursor if cursor is not None else ResumeCursor()
        state = self._stream_state({}, secrets, cursor, checkpoint)
        cursor.started(response_id, after)
        with _Converting(client):
            if self.wire == "fast":
                async with (
                    client.responses.with_streaming_response.retrieve(
                        response_id, stream=True, starting_after=after
                    ) as raw,
                    aclosing(_aevents(raw)) as events,
                ):
                    kept = tap(raw.http_response)
                    _bind(state, client, raw)
                    async for data in events:
                        for chunk in state.fast_at(data):
                            yield chunk
                        if state.finished:
                            break
                    kept.raise_error(_body_error(raw.http_response))
            else:
                async with await client.responses.retrieve(
                    response_id, stream=True, starting_after=after
                ) as stream:
                    state.request = stream.response.request
                    kept = tap(stream.response)
                    async for sdk_event in stream:
                        for chunk in state.sdk_at(sdk_event):
                            yield chunk
                        if state.finished:
                            break
                    kept.raise_error(_body_error(stream.response))
        state.end()

    def complete(self, request: Request) -> Reply:
        """One non-streaming call; the :class:`Reply` streaming would reduce to."""
        client = self._sync()
        with _Converting(client):
            client, kwargs = self._prepared(client, request, stream=False)
            response = client.responses.create(**kwargs)
        keys = _keys(client)
        return _read_whole(lambda r: response_chunks(r.to_dict(), keys), response, keys)

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        client = self._async()
        with _Converting(client):
            client, kwargs = self._prepared(client, request, stream=False)
            response = await client.responses.create(**kwargs)
        keys = _keys(client)
        return _read_whole(lambda r: response_chunks(r.to_dict(), keys), response, keys)
