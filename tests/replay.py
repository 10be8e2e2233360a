"""Replay transport for the real SDKs: serves recorded (or crafted) wire bytes over httpx2.

The SDKs run their own request building and stream parsing on top of it; only the network
is replaced. Each response is one entry of ``responses``, served in request order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import ssl
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from rxcontext.chunks import Chunk
from rxcontext.chunks import Reply as ChunkReply
from rxcontext.persist import reply_drafts
from rxcontext.providers.base import Model, Request
from rxcontext.records import Record, RecordType

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("RXCONTEXT_FIXTURES", ROOT.parent / "shared" / "fixtures" / "real"))


def real_fixture(relpath: str) -> Path:
    """Path of a recorded stream in ../shared/fixtures/real; skips the test when absent."""
    path = REAL / relpath
    if not path.exists():
        pytest.skip(f"recorded fixture {relpath} not found: ../shared/fixtures/real is absent")
    return path


def real_files(provider: str, pattern: str = "*.sse") -> list[Path]:
    """All recorded files of a provider folder (empty list when the folder is absent)."""
    folder = REAL / provider
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def sse(*events: Any, event_names: Sequence[str | None] | None = None, crlf: bool = False) -> bytes:
    """Frame JSON-able payloads (or raw strings) as SSE ``data:`` events."""
    nl = "\r\n" if crlf else "\n"
    out = []
    for i, ev in enumerate(events):
        data = ev if isinstance(ev, str) else json.dumps(ev)
        name = event_names[i] if event_names else None
        head = f"event: {name}{nl}" if name else ""
        out.append(f"{head}data: {data}{nl}{nl}")
    return "".join(out).encode()


@dataclass
class Reply:
    """One canned HTTP response."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    cut_after: int | None = None
    """Raise ``error`` after this many body pieces (pieces are SSE events)."""
    error: Exception | None = None
    gate: threading.Event | None = None
    """If set, each piece after the first waits for this event (to hold a stream open)."""


NO_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
"""An SSL context with no certificates, for SDK clients that only ever talk to a replay:
google-genai loads CA certificates for every ``genai.Client`` unless given one (83 ms a
client here; ``async_client_args={"ssl": NO_SSL}``)."""

_SEPARATOR = re.compile(rb"\r\n\r\n|\n\n")


def pieces(body: bytes) -> list[bytes]:
    """Split a body at SSE event boundaries (keeping the separators)."""
    out: list[bytes] = []
    start = 0
    for sep in _SEPARATOR.finditer(body):  # leftmost first; CRLF CRLF wins at one place
        out.append(body[start : sep.end()])
        start = sep.end()
    if start < len(body):
        out.append(body[start:])
    return out


class _Stream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, transport: Replay, reply: Reply) -> None:
        self._t = transport
        self._reply = reply
        self._closed = False

    def _parts(self) -> Iterator[bytes]:
        for n, part in enumerate(pieces(self._reply.body)):
            if self._reply.cut_after is not None and n >= self._reply.cut_after:
                raise self._reply.error or httpx2.ReadError("connection reset (replay cut)")
            if n and self._reply.gate is not None:
                self._reply.gate.wait(5)
            self._t.delivered += 1
            yield part
        if self._reply.cut_after is not None and self._reply.error is not None:
            raise self._reply.error

    def __iter__(self) -> Iterator[bytes]:
        yield from self._parts()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts():
            yield part

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._t.lock:
                self._t.closed += 1

    def close(self) -> None:
        self._close()

    async def aclose(self) -> None:
        self._close()


class Replay:
    """An httpx2 transport serving ``responses`` in order and recording requests."""

    def __init__(self, *responses: Reply | bytes | Path) -> None:
        self.responses = [self._norm(r) for r in responses]
        self.requests: list[httpx2.Request] = []
        self.bodies: list[Any] = []
        self.closed = 0
        self.delivered = 0
        self.lock = threading.Lock()
        self.transport = httpx2.MockTransport(self._handle)

    @staticmethod
    def _norm(r: Reply | bytes | Path) -> Reply:
        if isinstance(r, Reply):
            return r
        if isinstance(r, Path):
            return Reply(r.read_bytes())
        return Reply(r)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        with self.lock:
            n = len(self.requests)
            self.requests.append(request)
            raw = request.read()
            try:
                self.bodies.append(json.loads(raw) if raw else None)
            except ValueError:
                self.bodies.append(raw)
        if n >= len(self.responses):
            raise AssertionError(f"unexpected request #{n + 1}: {request.method} {request.url}")
        reply = self.responses[n]
        return httpx2.Response(reply.status, headers=reply.headers, stream=_Stream(self, reply))

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self.transport)

    def async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self.transport)


# -- records and chunk collection shared by the provider tests ---------------------------

_record_ids = itertools.count(1)


def record(kind: RecordType, content: str = "", **fields: Any) -> Record:
    """A live record of context ``"ctx"`` (fields: tool_call_id, tool_name, metadata, ...)."""
    return Record(next(_record_ids), "ctx", kind, content, True, 1, datetime.now(UTC), **fields)


def stored(reply: ChunkReply) -> list[Record]:
    """The records the window stores for ``reply`` (the persister's own mapping)."""
    return [
        record(
            d.type,
            d.content,
            response_id=d.response_id,
            streamed=d.streamed,
            tool_call_id=d.tool_call_id,
            tool_name=d.tool_name,
            metadata=dict(d.metadata),
        )
        for d in reply_drafts(reply, streamed=True)
    ]


def collect_sync(model: Model, request: Request) -> tuple[list[Chunk], BaseException | None]:
    """The chunks of one sync call, and the exception that ended it (or None)."""
    out: list[Chunk] = []
    try:
        for chunk in model.iter_chunks(request):
            out.append(chunk)
    except Exception as exc:
        return out, exc
    return out, None


def collect_async(model: Model, request: Request) -> tuple[list[Chunk], BaseException | None]:
    """The asyncio twin of :func:`collect_sync` (runs its own event loop)."""

    async def run() -> tuple[list[Chunk], BaseException | None]:
        out: list[Chunk] = []
        try:
            async for chunk in model.aiter_chunks(request):
                out.append(chunk)
        except Exception as exc:
            return out, exc
        return out, None

    return asyncio.run(run())
