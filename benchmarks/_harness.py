"""What the benchmarks compare, per provider: bare SDK iteration, the SSE + json floor,
rxcontext's adapter alone, and the full ``cw.stream()`` pipeline, all fed the same bytes.

Each SDK gets a real client whose ``httpx2`` transport (``MockTransport``) answers every
request with the same precomputed SSE pieces, one event per piece, as a server writes them.
Everything above the transport runs for real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import openai
from _wire import Stream
from google import genai
from google.genai import types as genai_types

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext import operators as rxops
from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel
from rxcontext.providers.base import Request

PROMPT = "Write a long answer about reactive streams."
URL = "http://replay.invalid/v1/stream"
_SSE_HEADERS = {"content-type": "text/event-stream"}


class _Pieces(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    __slots__ = ("_pieces", "_suspend")

    def __init__(self, pieces: tuple[bytes, ...], suspend: bool) -> None:
        self._pieces = pieces
        self._suspend = suspend

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._pieces)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._suspend:
            for piece in self._pieces:
                await asyncio.sleep(0)  # as a socket read would: let other streams run
                yield piece
        else:
            for piece in self._pieces:
                yield piece


def transport(stream: Stream, *, suspend: bool = False) -> httpx2.MockTransport:
    """A transport answering every request with ``stream``'s pieces.

    ``suspend`` makes the async body yield to the event loop before each piece, as a real
    network read does, so concurrent streams interleave.
    """
    pieces = stream.pieces

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers=_SSE_HEADERS, stream=_Pieces(pieces, suspend))

    return httpx2.MockTransport(handle)


# -- the SSE-split + json.loads floor ----------------------------------------------------


def _split(buf: bytes, out: list[Any]) -> bytes:
    # As lean as a parser can be: normalise CRLF (Gemini), split at blank lines, decode each
    # data line; no event names, comments or multi-line data.
    if b"\r" in buf:
        buf = buf.replace(b"\r\n", b"\n")
    *events, rest = buf.split(b"\n\n")
    for event in events:
        for line in event.split(b"\n"):
            if line[:6] == b"data: " and line != b"data: [DONE]":
                out.append(json.loads(line[6:].decode()))
    return rest


def floor_sync(client: httpx2.Client) -> int:
    """POST, split the body into SSE events, ``json.loads`` each data line: nothing more."""
    out: list[Any] = []
    buf = b""
    with client.stream("POST", URL, content=b"{}") as response:
        for piece in response.iter_bytes():
            buf = _split(buf + piece, out)
    return len(out)


async def floor_async(client: httpx2.AsyncClient) -> int:
    out: list[Any] = []
    buf = b""
    async with client.stream("POST", URL, content=b"{}") as response:
        async for piece in response.aiter_bytes():
            buf = _split(buf + piece, out)
    return len(out)


# -- per provider: SDK clients, bare iteration, rxcontext model --------------------------


@dataclass
class Provider:
    """One provider's clients on the replay transport and its bare-SDK consumers."""

    name: str
    stream: Stream
    client: Any
    async_client: Any
    http: httpx2.Client
    async_http: httpx2.AsyncClient
    sdk_sync: Callable[[], str]
    sdk_async: Callable[[], Any]
    make_model: Callable[[str], Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, wire: str) -> Any:
        return self.make_model(wire)


_OPENAI = {"api_key": "sk-bench", "base_url": "http://replay.invalid/v1", "max_retries": 0}
_MESSAGES = [{"role": "user", "content": PROMPT}]


def _openai_clients(stream: Stream) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    t = transport(stream)
    return (
        openai.OpenAI(http_client=httpx2.Client(transport=t), **_OPENAI),
        openai.AsyncOpenAI(http_client=httpx2.AsyncClient(transport=t), **_OPENAI),
    )


def openai_chat(stream: Stream) -> Provider:
    client, aclient = _openai_clients(stream)
    kwargs = {
        "model": "gpt-4o-mini",
        "messages": _MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def sdk_sync() -> str:
        parts = []
        with client.chat.completions.create(**kwargs) as s:
            for event in s:
                if event.choices and event.choices[0].delta.content:
                    parts.append(event.choices[0].delta.content)
        return "".join(parts)

    async def sdk_async() -> str:
        parts = []
        async with await aclient.chat.completions.create(**kwargs) as s:
            async for event in s:
                if event.choices and event.choices[0].delta.content:
                    parts.append(event.choices[0].delta.content)
        return "".join(parts)

    def model(wire: str) -> OpenAIModel:
        return OpenAIModel("gpt-4o-mini", client=client, async_client=aclient, wire=wire)

    return _provider("openai_chat", stream, client, aclient, sdk_sync, sdk_async, model)


def openai_responses(stream: Stream) -> Provider:
    client, aclient = _openai_clients(stream)
    kwargs = {"model": "gpt-5.5", "input": _MESSAGES, "stream": True}

    def sdk_sync() -> str:
        parts = []
        with client.responses.create(**kwargs) as s:
            for event in s:
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
        return "".join(parts)

    async def sdk_async() -> str:
        parts = []
        async with await aclient.responses.create(**kwargs) as s:
            async for event in s:
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
        return "".join(parts)

    def model(wire: str) -> OpenAIResponsesModel:
        return OpenAIResponsesModel("gpt-5.5", client=client, async_client=aclient, wire=wire)

    return _provider("openai_responses", stream, client, aclient, sdk_sync, sdk_async, model)


def anthropic_messages(stream: Stream) -> Provider:
    t = transport(stream)
    common: dict[str, Any] = {"api_key": "sk-ant-bench", "max_retries": 0}
    client = anthropic.Anthropic(http_client=httpx2.Client(transport=t), **common)
    aclient = anthropic.AsyncAnthropic(http_client=httpx2.AsyncClient(transport=t), **common)
    kwargs = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        "stream": True,
    }

    def sdk_sync() -> str:
        parts = []
        with client.messages.create(**kwargs) as s:
            for event in s:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
        return "".join(parts)

    async def sdk_async() -> str:
        parts = []
        async with await aclient.messages.create(**kwargs) as s:
            async for event in s:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
        return "".join(parts)

    def model(wire: str) -> AnthropicModel:
        return AnthropicModel("claude-sonnet-4-5", client=client, async_client=aclient, wire=wire)

    return _provider("anthropic", stream, client, aclient, sdk_sync, sdk_async, model)


def gemini(stream: Stream) -> Provider:
    t = transport(stream)
    options = genai_types.HttpOptions(
        httpx_client=httpx2.Client(transport=t), httpx_async_client=httpx2.AsyncClient(transport=t)
    )
    client = genai.Client(api_key="bench-key", http_options=options)
    contents = [genai_types.Content(role="user", parts=[genai_types.Part(text=PROMPT)])]
    config = genai_types.GenerateContentConfig(
        automatic_function_calling=genai_types.AutomaticFunctionCallingConfig(disable=True)
    )

    def text_of(response: Any) -> str | None:
        candidates = response.candidates
        if not candidates or candidates[0].content is None:
            return None
        parts = candidates[0].content.parts or ()
        return "".join(p.text for p in parts if p.text and not p.thought)

    def sdk_sync() -> str:
        parts = []
        for response in client.models.generate_content_stream(
            model="gemini-2.5-pro", contents=contents, config=config
        ):
            text = text_of(response)
            if text:
                parts.append(text)
        return "".join(parts)

    async def sdk_async() -> str:
        parts = []
        async for response in await client.aio.models.generate_content_stream(
            model="gemini-2.5-pro", contents=contents, config=config
        ):
            text = text_of(response)
            if text:
                parts.append(text)
        return "".join(parts)

    def model(wire: str) -> GeminiModel:
        return GeminiModel("gemini-2.5-pro", client=client, wire=wire)

    provider = _provider("gemini", stream, client, client.aio, sdk_sync, sdk_async, model)
    provider.extra.update(contents=contents, config=config)
    return provider


def _provider(
    name: str,
    stream: Stream,
    client: Any,
    aclient: Any,
    sdk_sync: Callable[[], str],
    sdk_async: Callable[[], Any],
    model: Callable[[str], Any],
) -> Provider:
    t = transport(stream)
    return Provider(
        name,
        stream,
        client,
        aclient,
        httpx2.Client(transport=t),
        httpx2.AsyncClient(transport=t),
        sdk_sync,
        sdk_async,
        model,
    )


BUILDERS: dict[str, Callable[[Stream], Provider]] = {
    "openai_chat": openai_chat,
    "openai_responses": openai_responses,
    "anthropic": anthropic_messages,
    "gemini": gemini,
}


def wire_supported(make_model: Callable[[str], Any], wire: str) -> str | None:
    """``None`` if the model class accepts ``wire=``, else why not (a skip reason)."""
    try:
        model = make_model(wire)
    except (TypeError, ValueError) as exc:
        return f"this rxcontext's model does not accept wire={wire!r} yet: {exc}"
    if getattr(model, "wire", wire) != wire:
        return f"the model ignored wire={wire!r}"
    return None


# -- the rxcontext side ------------------------------------------------------------------


class Counter:
    """The benchmark's middleware: counts chunks and text characters (a typical hook)."""

    __slots__ = ("chars", "chunks")

    def __init__(self) -> None:
        self.chunks = 0
        self.chars = 0

    def on_chunk(self, chunk: Chunk) -> None:
        self.chunks += 1
        self.chars += len(chunk.text)


_names = itertools.count()


def fresh_window(store: rxcontext.Store, model: Any, **kwargs: Any) -> ContextWindow:
    """A new context holding one prompt, so every round sends the same request."""
    cw = ContextWindow(store, model, context=f"bench-{next(_names)}", **kwargs)
    cw.add_prompt(PROMPT)
    return cw


class _TextSink:
    """The subscriber: keeps the text deltas, as the bare-SDK consumers do."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[str] = []

    def on_next(self, chunk: Chunk) -> None:
        if chunk.kind is ChunkKind.TEXT:
            self.parts.append(chunk.text)


def pipeline_sync(cw: ContextWindow) -> str:
    """``cw.stream()`` with a middleware, subscribed; the persister stores the reply."""
    counter = Counter()
    sink = _TextSink()
    errors: list[Exception] = []
    cw.stream(rxops.middleware(on_chunk=counter.on_chunk)).subscribe(
        on_next=sink.on_next, on_error=errors.append
    )
    if errors:
        raise errors[0]
    return "".join(sink.parts)


async def pipeline_async(cw: ContextWindow) -> str:
    """``cw.astream()`` with a middleware; the persister stores the reply."""
    counter = Counter()
    parts = []
    async for chunk in cw.astream(rxops.middleware(on_chunk=counter.on_chunk)):
        if chunk.kind is ChunkKind.TEXT:
            parts.append(chunk.text)
    return "".join(parts)


def adapter_sync(model: Any, request: Request) -> str:
    """The provider adapter alone: ``model.iter_chunks`` to a list of chunks."""
    return "".join(c.text for c in model.iter_chunks(request) if c.kind is ChunkKind.TEXT)


async def adapter_async(model: Any, request: Request) -> str:
    parts = []
    async for c in model.aiter_chunks(request):
        if c.kind is ChunkKind.TEXT:
            parts.append(c.text)
    return "".join(parts)


def stored_text(cw: ContextWindow) -> str:
    """The content of the context's last stored record (the reply)."""
    records = cw.live_records()
    return records[-1].content if records else ""


def middleware_counter() -> Any:
    """The benchmark's middleware operator (a chunk counter)."""
    return rxops.middleware(on_chunk=Counter().on_chunk)
