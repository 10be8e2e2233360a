"""Offline replies framed exactly as the OpenAI Chat Completions SSE stream.

Used by ``rxcontext demo`` (and usable in your own tests): the real ``openai`` SDK sends its
request to an ``httpx2`` transport that answers with these frames, paced like a live model,
so everything above the network — SDK parsing, our adapter, operators, persister, SQLite —
runs for real without an API key.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

__all__ = ["ReplayTransport", "ScriptedReply", "chat_sse"]

_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """One canned reply: text, optional tool calls, optional cut after ``cut_after`` events."""

    text: str = ""
    tool_calls: Sequence[tuple[str, str, dict[str, Any]]] = ()
    """``(call_id, name, arguments)`` triples."""
    cut_after: int | None = None
    model: str = "gpt-4o-mini-replay"
    usage: tuple[int, int] = (0, 0)


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chat_sse(
    reply: ScriptedReply, *, response_id: str = "chatcmpl-replay", words_per_chunk: int = 2
) -> list[bytes]:
    """The SSE events (each ``data: ...\\n\\n``) a Chat Completions stream of ``reply`` has."""
    base = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": reply.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _frame({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    events = [chunk({"role": "assistant", "content": ""})]
    words = _WORDS.findall(reply.text)
    for i in range(0, len(words), words_per_chunk):
        events.append(chunk({"content": "".join(words[i : i + words_per_chunk])}))
    for index, (call_id, name, arguments) in enumerate(reply.tool_calls):
        raw = json.dumps(arguments)
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        for j in range(0, len(raw), 8):
            events.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": raw[j : j + 8]}}]})
            )
    events.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
    prompt, completion = reply.usage
    completion = completion or max(1, len(words))
    events.append(
        _frame(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )
    )
    events.append(b"data: [DONE]\n\n")
    return events


class _Body(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(
        self, events: list[bytes], delay: float, cut_after: int | None, owner: ReplayTransport
    ):
        self._events = events
        self._delay = delay
        self._cut = cut_after
        self._owner = owner

    def _check(self, n: int) -> None:
        if self._cut is not None and n >= self._cut:
            raise httpx2.RemoteProtocolError(
                "peer closed connection without sending complete message body (replayed cut)"
            )

    def __iter__(self) -> Iterator[bytes]:
        for n, event in enumerate(self._events):
            self._check(n)
            if n and self._delay:
                time.sleep(self._delay)
            yield event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n, event in enumerate(self._events):
            self._check(n)
            if n and self._delay:
                await asyncio.sleep(self._delay)
            yield event

    def close(self) -> None:
        self._owner._closed()

    async def aclose(self) -> None:
        self._owner._closed()


@dataclass
class ReplayTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """An httpx2 transport answering each request with the next :class:`ScriptedReply`.

    ``delay`` seconds pass between events (0 for tests). ``requests`` keeps every request
    body (parsed JSON) the SDK sent; ``closed`` counts response streams closed.
    """

    replies: Sequence[ScriptedReply]
    delay: float = 0.0
    requests: list[Any] = field(default_factory=list)
    closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _respond(self, request: httpx2.Request, body: bytes) -> httpx2.Response:
        with self._lock:
            n = len(self.requests)
            self.requests.append(json.loads(body) if body else None)
        if n >= len(self.replies):
            return httpx2.Response(
                500, json={"error": {"message": "replay has no more replies", "type": "replay"}}
            )
        reply = self.replies[n]
        events = chat_sse(reply, response_id=f"chatcmpl-replay-{n + 1}")
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Body(events, self.delay, reply.cut_after, self),
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._respond(request, request.read())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._respond(request, await request.aread())

    def _closed(self) -> None:
        with self._lock:
            self.closed += 1


def replay_model(
    replies: Sequence[ScriptedReply],
    *,
    delay: float = 0.0,
    model_name: str = "gpt-4o-mini-replay",
) -> tuple[Any, ReplayTransport]:
    """An :class:`~rxcontext.providers.OpenAIModel` whose real SDK client talks to a replay.

    Returns the model and its transport (to inspect requests). No key, no network.
    ``model_name`` is the model's name (a real one, ``"gpt-4o-mini"``, gets real prices).
    """
    import openai

    from .openai import OpenAIModel

    transport = ReplayTransport(list(replies), delay=delay)
    common: dict[str, Any] = {
        "api_key": "replay-needs-no-key",
        "base_url": "http://replay.invalid/v1",
        "max_retries": 0,
    }
    client = openai.OpenAI(http_client=httpx2.Client(transport=transport), **common)
    async_client = openai.AsyncOpenAI(http_client=httpx2.AsyncClient(transport=transport), **common)
    return OpenAIModel(model_name, client=client, async_client=async_client), transport


__all__ += ["replay_model"]
