"""A minimal HTTP/1.1 server on asyncio streams (no framework): the page, a JSON API, and
server-sent events that follow a reply.

    GET  /                          the page (static/index.html); /static/* its script and style
    GET  /api/contexts              every context, newest first
    POST /api/contexts   {name}     create a context
    GET  /api/state?context=NAME    the conversation: messages, interrupted and streaming replies
    POST /api/send       {context, prompt}       start a reply -> {reply_id}
    POST /api/stop       {reply_id}              cut it (on any worker): its checkpoint is saved
    POST /api/resume     {context, checkpoint}   continue an interrupted reply -> {reply_id}
    POST /api/keep       {context, checkpoint}   store it as it is
    POST /api/discard    {context, checkpoint}   drop it for good
    GET  /api/watch?reply=ID           SSE: the reply so far, then live, then how it ended

Watching is all a page does with a reply: closing the page (or reloading it) leaves the reply
streaming. Each event that changes the reply's text carries an ``id``, the position of the
text it leaves on the page (its length and a CRC-32); a watch that reconnects (EventSource
does so on its own, sending ``Last-Event-ID``; a client of its own can say ``&after=ID``)
goes on from there, on whichever worker it reaches: the reply is replayed and what the page
has is not sent again. A page whose text is not the reply's (a worker that died had shown
more than it stored) is sent the whole text again (``rewind`` to 0, then ``text``).

POSTs must carry JSON (so another site cannot post a form here), and requests must name this
server in their ``Host`` header (so a rebound DNS name cannot read the chats), unless it
listens on every address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rxcontext import (
    CheckpointNotFound,
    CheckpointResolved,
    ChunkKind,
    ContextNotFound,
    RxContextError,
    StreamInterrupted,
)

from .chat import Chat, ReplyGone, UsageTally

__all__ = ["Server"]

STATIC = Path(__file__).with_name("static")
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/markdown.js": ("markdown.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
# Nothing on the page may run or load anything but our own files: even if some text got
# past the Markdown renderer as markup, no inline script or event handler would run.
SECURITY_HEADERS = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
)
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
}
MAX_BODY = 1 << 20
DISCARD_AT_MOST = 64 << 20  # what a refused body may be read of, to answer 413 cleanly
RETRY_MS = 500  # how soon a page's EventSource reconnects after its connection broke
POSITION = re.compile(r"(\d{1,12})-([0-9a-f]{8})")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.headers.get("content-type", "").startswith("application/json"):
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise HttpError(400, "the body is JSON nested too deep to read") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        return data


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HttpError(400, f"{name!r} must be a {kind.__name__}")
    return value


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    """Read and drop ``length`` bytes (at most ``DISCARD_AT_MOST``: past that the peer is
    not an honest client, and the connection may be reset)."""
    left = min(length, DISCARD_AT_MOST)
    while left > 0:
        got = await reader.read(min(left, 1 << 16))
        if not got:
            return
        left -= len(got)


async def read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0") or 0)
    except ValueError:
        length = -1
    if length < 0:
        raise HttpError(400, "the Content-Length header is not a byte count")
    if length > MAX_BODY:
        await _discard(reader, length)  # read it: closing on unread bytes resets the
        raise HttpError(413, "request body too large")  # connection before the answer
    body = await reader.readexactly(length) if length else b""
    url = urllib.parse.urlsplit(target)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
    return Request(method, url.path, query, headers, body)


async def respond(
    writer: asyncio.StreamWriter, status: int, kind: str, body: bytes, extra: str = ""
) -> None:
    writer.write(
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def respond_json(writer: asyncio.StreamWriter, status: int, data: Any) -> None:
    await respond(writer, status, "application/json", json.dumps(data).encode())


def _status_of(exc: Exception) -> int:
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, ContextNotFound | CheckpointNotFound | ReplyGone):
        return 404
    if isinstance(exc, CheckpointResolved | RxContextError):  # busy, settled, superseded
        return 409
    return 400  # ValueError: an empty prompt, a checkpoint without text to keep


class Server:
    """Routes requests to a :class:`Chat`; one request per connection."""

    def __init__(self, chat: Chat, default_context: str) -> None:
        self.chat = chat
        self.default_context = default_context
        self.allowed_hosts: set[str] = set()

    def listen_on(self, host: str, port: int) -> None:
        """Accept ``Host`` headers naming this address (and localhost, for loopback). A
        server listening on every address (``0.0.0.0``, ``::``) accepts any name."""
        if host in ("", "0.0.0.0", "::"):
            self.allowed_hosts = set()
            return
        names = {host, f"[{host}]"}
        if host in ("127.0.0.1", "::1", "localhost"):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        self.allowed_hosts = {f"{name}:{port}" for name in names}
        if port == 80:
            self.allowed_hosts |= names

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader)
            await self.route(request, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # not HTTP, or the peer left mid-request
        except HttpError as exc:
            with contextlib.suppress(ConnectionError):
                await respond_json(writer, exc.status, {"error": str(exc)})
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def route(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.allowed_hosts and request.headers.get("host") not in self.allowed_hosts:
            raise HttpError(403, "unknown Host header")
        key = (request.method, request.path)
        if request.method == "GET" and request.path in ASSETS:
            name, kind = ASSETS[request.path]
            await respond(writer, 200, kind, (STATIC / name).read_bytes(), SECURITY_HEADERS)
            return
        if key == ("GET", "/api/watch"):
            reply_id = request.query.get("reply", "")
            # EventSource sends the last id it got when it reconnects: that wins.
            after = request.headers.get("last-event-id") or request.query.get("after")
            match = POSITION.fullmatch(after) if after else None
            if not reply_id or (after and match is None):
                raise HttpError(400, "watch needs ?reply=ID (and after=ID, an event's id)")
            at = (int(match[1]), int(match[2], 16)) if match else None
            await self.watch(reply_id, at, reader, writer)
            return
        action = self.actions.get(key)
        if action is None:
            raise HttpError(404 if request.method in ("GET", "POST") else 405, "no such page")
        try:
            result = await action(self, request)
        except Exception as exc:
            if not isinstance(exc, HttpError | RxContextError | LookupError | ValueError):
                raise
            await respond_json(writer, _status_of(exc), {"error": str(exc)})
            return
        await respond_json(writer, 200, result)

    # -- JSON actions -----------------------------------------------------------------------

    async def contexts(self, request: Request) -> Any:
        return {"contexts": await self.chat.contexts(), "default": self.default_context}

    async def create_context(self, request: Request) -> Any:
        name = _field(request.json(), "name", str)
        return {"context": await self.chat.create_context(name)}

    async def state(self, request: Request) -> Any:
        return await self.chat.state(request.query.get("context") or self.default_context)

    async def send(self, request: Request) -> Any:
        data = request.json()
        context, prompt = _field(data, "context", str), _field(data, "prompt", str)
        return {"reply_id": await self.chat.send(context, prompt)}

    async def stop(self, request: Request) -> Any:
        # Its watchers (on any worker) show the checkpoint once its owner has saved it.
        return {"stopped": await self.chat.stop(_field(request.json(), "reply_id", str))}

    async def resume(self, request: Request) -> Any:
        data = request.json()
        context, checkpoint = _field(data, "context", str), _field(data, "checkpoint", int)
        return {"reply_id": await self.chat.resume(context, checkpoint)}

    async def keep(self, request: Request) -> Any:
        data = request.json()
        context, checkpoint = _field(data, "context", str), _field(data, "checkpoint", int)
        return {"record": await self.chat.keep(context, checkpoint)}

    async def discard(self, request: Request) -> Any:
        data = request.json()
        context, checkpoint = _field(data, "context", str), _field(data, "checkpoint", int)
        await self.chat.discard(context, checkpoint)
        return {}

    actions: ClassVar[dict[tuple[str, str], Callable[[Server, Request], Awaitable[Any]]]] = {
        ("GET", "/api/contexts"): contexts,
        ("POST", "/api/contexts"): create_context,
        ("GET", "/api/state"): state,
        ("POST", "/api/send"): send,
        ("POST", "/api/stop"): stop,
        ("POST", "/api/resume"): resume,
        ("POST", "/api/keep"): keep,
        ("POST", "/api/discard"): discard,
    }

    # -- server-sent events -----------------------------------------------------------------

    async def watch(
        self,
        reply_id: str,
        after: tuple[int, int] | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Follow one reply over SSE (from position ``after``: the page has that text
        already). The page going away ends the watch, not the reply."""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            + f"retry: {RETRY_MS}\n\n".encode()
        )
        await writer.drain()
        follow = asyncio.create_task(self._follow(reply_id, after, writer))
        # The page sends nothing more on this connection: EOF means it went away.
        gone = asyncio.create_task(reader.read(1))
        try:
            await asyncio.wait({follow, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (follow, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await follow

    async def _follow(
        self, reply_id: str, after: tuple[int, int] | None, writer: asyncio.StreamWriter
    ) -> None:
        chat = self.chat
        shown = Shown()  # the page's text, as the events of this watch make it
        # Where the page is, until the replay gets there: text before it is not sent again.
        behind = after
        own = UsageTally()  # a reply of another process: its usage as far as we see it

        async def send(event: dict[str, Any], position: str | None = None) -> None:
            head = f"id: {position}\n".encode() if position is not None else b""
            writer.write(head + b"data: " + json.dumps(event).encode() + b"\n\n")
            await writer.drain()

        async def catch_up(at: tuple[int, int]) -> bool:
            """Whether the replay reached the page's position ``at`` (and the rest is sent)."""
            length, crc = at
            if shown.length < length:
                return False
            if zlib.crc32(shown.text[:length].encode()) == crc:
                rest = shown.text[length:]
                if rest:
                    await send({"type": "text", "text": rest}, shown.position)
            else:  # the page shows another text: all of it again
                await send({"type": "rewind", "length": 0}, Shown().position)
                if shown.text:
                    await send({"type": "text", "text": shown.text}, shown.position)
            return True

        try:
            if behind is not None and await catch_up(behind):
                behind = None
            async with contextlib.aclosing(chat.watch(reply_id)) as chunks:
                async for chunk in chunks:
                    own.add(chunk)
                    event = _event_of(chunk, chat.usage.get(reply_id) or own)
                    if chunk.kind is ChunkKind.REWIND:
                        shown.rewind(chunk.index)
                        event = {"type": "rewind", "length": _utf16(shown.text)}
                    elif chunk.kind is ChunkKind.TEXT and chunk.text:
                        shown.append(chunk.text)
                    else:  # status and usage: said again, harmless; no position of their own
                        if event is not None:
                            await send(event)
                        continue
                    if behind is None:
                        assert event is not None
                        await send(event, shown.position)
                    elif await catch_up(behind):
                        behind = None
        except StreamInterrupted as exc:
            await send({"type": "interrupted", "box": chat.box(exc.checkpoint)})
            return
        except ReplyGone as exc:
            await send({"type": "gone", "message": str(exc)})
            return
        except Exception as exc:  # the reply failed in a way rxcontext did not checkpoint
            await send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
            return
        stored = await asyncio.to_thread(chat.stored_reply, reply_id)
        await send({"type": "done", "message": stored})


class Shown:
    """A reply's text as a page shows it, and its position: ``LENGTH-CRC32`` (characters,
    and the CRC-32 of its UTF-8 in hex), the id of the event that left it so."""

    def __init__(self) -> None:
        self._pieces: list[str] = []  # joined when the whole is read: a long reply's
        self.length = 0  # appends stay linear (str += would copy it all every time)
        self.crc = 0

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        self.length += len(piece)
        self.crc = zlib.crc32(piece.encode(), self.crc)

    def rewind(self, length: int) -> None:
        text = self.text[:length]
        self._pieces = [text]
        self.length = len(text)
        self.crc = zlib.crc32(text.encode())

    @property
    def position(self) -> str:
        return f"{self.length}-{self.crc:08x}"


def _utf16(text: str) -> int:
    """``text``'s length in JavaScript (UTF-16 code units), for the page's ``slice``."""
    return len(text.encode("utf-16-le")) // 2


def _event_of(chunk: Any, tally: UsageTally) -> dict[str, Any] | None:
    kind = chunk.kind
    if kind is ChunkKind.REWIND:  # another worker took the reply over from its checkpoint
        return {"type": "rewind", "length": chunk.index}
    if kind is ChunkKind.TEXT:
        return {"type": "text", "text": chunk.text} if chunk.text else None
    if kind is ChunkKind.THINKING:
        return {"type": "status", "text": "thinking…"}
    if kind is ChunkKind.TOOL_CALL and chunk.name:
        return {"type": "status", "text": f"calling {chunk.name}…"}
    if kind is ChunkKind.TOOL_RESULT:
        return {"type": "status", "text": f"{chunk.name or 'tool'} answered"}
    if kind in (ChunkKind.USAGE, ChunkKind.DONE):
        return {"type": "usage", "usage": tally.to_dict()}
    return None
