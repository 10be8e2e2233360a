"""A local OpenAI-compatible HTTP server for tests of programs run as users run them.

Scripts and the CLI in a subprocess cannot take a replay transport, but they can take a
base URL. This server answers ``POST …/chat/completions`` with the SSE frames of a
:class:`~rxcontext.providers.replay.ScriptedReply` (the same bytes the replay transport
serves) and keeps every request it received, so a test can check what was sent.
:func:`silent_server` sends a stream's first events and then stays silent, for tests of
time limits that must break a read waiting in a real socket.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rxcontext.providers.replay import ScriptedReply, chat_sse


@dataclass
class LocalServer:
    """What the server was asked; ``url`` is its base URL (``http://127.0.0.1:PORT/v1``)."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@contextmanager
def openai_server(replies: Sequence[str | ScriptedReply]) -> Iterator[LocalServer]:
    """Serve ``replies`` in order (the last one again once they run out)."""
    state = LocalServer()
    lock = threading.Lock()
    scripted = [r if isinstance(r, ScriptedReply) else ScriptedReply(r) for r in replies]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(json.loads(body or b"{}"))
                state.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = scripted[min(len(state.requests), len(scripted)) - 1]
            payload = b"".join(chat_sse(reply))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class SilentServer:
    """A server that sends a stream's first events and then nothing (see :func:`silent_server`)."""

    url: str = ""
    gone: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed (or shut) the connection of a stream."""


@contextmanager
def silent_server(first: bytes) -> Iterator[SilentServer]:
    """Answer every POST with 200, SSE headers and ``first`` (one HTTP chunk), then stay
    silent, the connection open, until the client goes away or the block ends."""
    state = SilentServer()
    connections: list[Any] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                connections.append(self.connection)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
            self.wfile.flush()
            try:
                while self.connection.recv(4096):  # the client sends nothing more
                    pass
            except OSError:
                pass
            state.gone.set()
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        with lock:
            for conn in connections:  # ends a stream the client still waits on, too
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        server.shutdown()
        server.server_close()
        thread.join()
