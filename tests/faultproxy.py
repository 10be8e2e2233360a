"""A TCP proxy in front of PostgreSQL that can cut a connection at an exact protocol point.

Used to make a real *ambiguous commit*: the proxy forwards the client's ``COMMIT`` to the
server, then closes both sides without relaying the answer. The server commits; the client
sees its connection lost during COMMIT and cannot know the outcome. (``cut="before"`` drops
the COMMIT instead, so the server rolls back.) Armed ``on`` other bytes it cuts other
messages, e.g. the first query after connecting, as a failover or a restart at that instant
would. Threads and blocking sockets; loopback only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

# The messages psycopg sends to end a transaction block: a simple query ('Q', int32 length,
# text), or in pipeline mode a Parse of it ('P', int32 length, unnamed, text, no parameters).
COMMITS = (b"Q\x00\x00\x00\x0bCOMMIT\x00", b"P\x00\x00\x00\x0e\x00COMMIT\x00\x00\x00")


class FaultProxy:
    """Listen on 127.0.0.1:<port>, forward to ``upstream``; cut the next ``cuts`` COMMITs
    (or messages holding any of the ``on`` bytes). ``accepted`` counts the connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.cut: Literal["after", "before"] = "after"
        self.cuts = 0  # how many of the next COMMITs to cut
        self.cut_done = 0
        self.on: tuple[bytes, ...] = COMMITS
        self.accepted = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(
        self,
        cuts: int = 1,
        cut: Literal["after", "before"] = "after",
        on: tuple[bytes, ...] = COMMITS,
    ) -> None:
        with self._lock:
            self.cuts, self.cut, self.cut_done, self.on = cuts, cut, 0, on

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts > 0:
                self.cuts -= 1
                self.cut_done += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            server = socket.create_connection(self.upstream)
            cutting = threading.Event()
            for pump in (self._pump_up, self._pump_down):
                threading.Thread(target=pump, args=(client, server, cutting), daemon=True).start()

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _pump_up(
        self, client: socket.socket, server: socket.socket, cutting: threading.Event
    ) -> None:
        try:
            while data := client.recv(65536):
                if any(c in data for c in self.on) and self._take_cut():
                    if self.cut == "before":
                        break
                    cutting.set()  # the answer to this COMMIT is never relayed
                server.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def _pump_down(
        self, client: socket.socket, server: socket.socket, cutting: threading.Event
    ) -> None:
        try:
            while data := server.recv(65536):
                if cutting.is_set():
                    break  # the server has answered the COMMIT: it is done; cut the client off
                client.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
