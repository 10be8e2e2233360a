"""A local OpenAI-compatible HTTP server for tests of programs run as users run them.

Scripts and the CLI in a subprocess cannot take a replay transport, but they can take a
base URL. This server answers ``POST …/chat/completions`` with the SSE frames of a
:class:`~rxcontext.providers.replay.ScriptedReply` (the same bytes the replay transport
serves) and keeps every request it received, so a test can check what was sent.
"""

from __future__ import annotations

import http.server
import json
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
