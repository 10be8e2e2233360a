"""05 — a small web chat: an asyncio server streams replies to a browser over SSE.

Reload the page while a reply is arriving: the server sees the connection close, cancels the
stream, and rxcontext saves a checkpoint holding exactly the text that was sent. The
reloaded page reads that checkpoint from the database, shows it, and offers to resume; the
finished reply is stored as one record.

Only the standard library's asyncio streams serve HTTP here (no web framework). Offline by
default: each reply is a canned answer played through the real OpenAI SDK over a replay
transport. ``--model openai:gpt-4o-mini`` (with OPENAI_API_KEY) talks to a real model.

    python examples/05_webchat.py            # then open http://127.0.0.1:8765
    python examples/05_webchat.py --port 0 --db /tmp/chat.db --delay 0.05

One page at a time: a page that loads (or sends) takes over from a reply still streaming to
an older page, which is cut and checkpointed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import rxcontext
from rxcontext import Checkpoint, ChunkKind, ContextWindow, RecordType, StreamInterrupted
from rxcontext.providers.base import Model
from rxcontext.providers.replay import ScriptedReply, replay_model

PAGE = Path(__file__).with_name("webchat") / "index.html"

Send = Callable[[dict[str, Any]], Awaitable[None]]


def canned_answer(prompt: str) -> str:
    """The offline bot's reply to ``prompt`` (deterministic, so a resume can finish it)."""
    return (
        f'You wrote: "{prompt}". This reply is streamed by an asyncio server over '
        "server-sent events, one small chunk at a time, and rxcontext stores it in SQLite "
        "when it completes. Reload the page while it is still arriving: the server notices "
        "the closed connection, cancels the stream and saves a checkpoint holding exactly "
        "the text that was sent. The reloaded page reads that checkpoint from the database, "
        "shows it, and offers to resume. Resuming streams only the rest of the reply, and "
        "the finished answer is stored as one record, as if it had never been cut."
    )


class Chat:
    """The conversation behind the page: one context, one reply streaming at a time."""

    def __init__(self, db: str, context: str, delay: float, model: Model | None) -> None:
        self.store = rxcontext.open(db)
        self.cw = ContextWindow(self.store, model, context=context)
        self.delay = delay
        self.real_model = model
        self.active: asyncio.Task[None] | None = None

    def _offline(self, text: str) -> None:
        if self.real_model is None:
            self.cw.model, _ = replay_model([ScriptedReply(text)], delay=self.delay)

    async def take_over(self) -> None:
        """Cut a reply still streaming to another (older) page; its checkpoint is saved."""
        task, self.active = self.active, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def state(self) -> dict[str, Any]:
        roles = {RecordType.PROMPT: "user", RecordType.MODEL_RESP: "assistant"}
        messages = [
            {"role": roles[r.type], "text": r.content, "id": r.id}
            for r in self.cw.live_records()
            if r.type in roles and r.content
        ]
        checkpoints = [
            {"id": cp.id, "text": cp.text, "error": cp.error} for cp in self.cw.checkpoints()
        ]
        return {"context": self.cw.context_name, "messages": messages, "checkpoints": checkpoints}

    async def reply(self, prompt: str, send: Send) -> None:
        self.cw.add_prompt(prompt)
        self._offline(canned_answer(prompt))
        await self._pump(self.cw.astream(), send)

    async def resume(self, checkpoint_id: int, send: Send) -> None:
        checkpoint = self.store.get_checkpoint(checkpoint_id)
        self._offline(self._rest(checkpoint))
        await self._pump(self.cw.aresume(checkpoint_id), send)

    def _rest(self, checkpoint: Checkpoint) -> str:
        prompts = [r.content for r in self.cw.live_records() if r.type is RecordType.PROMPT]
        answer = canned_answer(prompts[-1]) if prompts else ""
        return answer[len(checkpoint.text) :] if answer.startswith(checkpoint.text) else " …"

    async def _pump(self, chunks: Any, send: Send) -> None:
        try:
            async with contextlib.aclosing(chunks) as stream:
                async for chunk in stream:
                    if chunk.kind is ChunkKind.TEXT and chunk.text:
                        await send({"type": "text", "text": chunk.text})
                    elif chunk.kind is ChunkKind.TOOL_CALL and chunk.name:
                        await send({"type": "tool", "name": chunk.name})
        except StreamInterrupted as exc:
            await send({"type": "error", "message": str(exc), "checkpoint": exc.checkpoint.id})
            return
        stored = self.cw.live_records()[-1]
        await send({"type": "done", "record": stored.id})


class Server:
    """A minimal HTTP/1.1 server on asyncio streams: one request per connection."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
            url = urllib.parse.urlsplit(target)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            await self.route(method, url.path, query, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        chat = self.chat
        if method != "GET":
            await respond(writer, 405, "text/plain", b"GET only\n")
        elif path == "/":
            await respond(writer, 200, "text/html; charset=utf-8", PAGE.read_bytes())
        elif path == "/api/state":
            await chat.take_over()
            body = json.dumps(chat.state()).encode()
            await respond(writer, 200, "application/json", body)
        elif path == "/api/chat" and query.get("prompt", "").strip():
            prompt = query["prompt"].strip()
            await self.sse(reader, writer, lambda send: chat.reply(prompt, send))
        elif path == "/api/resume" and query.get("id", "").isdigit():
            checkpoint_id = int(query["id"])
            await self.sse(reader, writer, lambda send: chat.resume(checkpoint_id, send))
        else:
            await respond(writer, 404, "text/plain", b"not found\n")

    async def sse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        run: Callable[[Send], Awaitable[None]],
    ) -> None:
        await self.chat.take_over()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()

        async def send(event: dict[str, Any]) -> None:
            writer.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await writer.drain()

        async def guarded() -> None:
            try:
                await run(send)
            except rxcontext.RxContextError as exc:  # e.g. a checkpoint already resumed
                await send({"type": "error", "message": str(exc), "checkpoint": None})

        pump = asyncio.create_task(guarded())
        self.chat.active = pump
        # The browser sends nothing more on this connection: EOF means the page went away.
        gone = asyncio.create_task(reader.read(1))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not pump.done():
                pump.cancel()  # cancels the stream inside: the checkpoint is saved
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
            if self.chat.active is pump:
                self.chat.active = None


async def respond(writer: asyncio.StreamWriter, status: int, kind: str, body: bytes) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def serve(args: argparse.Namespace) -> None:
    model: Model | None = None
    if args.model:
        from rxcontext.providers.factory import model_from_spec

        model = model_from_spec(args.model)
    chat = Chat(args.db, args.context, args.delay, model)
    server = await asyncio.start_server(Server(chat).handle, args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"serving on http://{host}:{port} (database {args.db})", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        chat.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--db", default="webchat.db", help="SQLite file (default webchat.db)")
    parser.add_argument("--context", default="webchat")
    parser.add_argument("--delay", type=float, default=0.08, help="offline bot: s per event")
    parser.add_argument("--model", help="a real model, e.g. openai:gpt-4o-mini")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
