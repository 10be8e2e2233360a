"""A load balancer in front of the web chat's workers, for the browser tests.

It listens on 127.0.0.1:<port>, reads each request's head, names the worker in its ``Host``
header (each worker accepts only its own name, as behind a real balancer that rewrites it),
and relays the connection both ways to the worker chosen by :meth:`Balancer.route`. The test
can :meth:`~Balancer.cut` the live connections (both sides closed at once, as a crashed
worker or a dropped network would) and read what went through (:attr:`Balancer.seen`).
Threads and blocking sockets; loopback only; one request per connection (the web chat closes
each connection after its response).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Relayed:
    """One connection through the balancer: its request, its worker, what came back."""

    path: str
    headers: dict[str, str]
    upstream: str
    response: bytearray = field(default_factory=bytearray)
    ended: threading.Event = field(default_factory=threading.Event)


class Balancer:
    """Relays every new connection to the worker at ``upstream`` (a URL) until rerouted."""

    def __init__(self, upstream: str) -> None:
        self._lock = threading.Lock()
        self._upstream = upstream
        self._open: list[tuple[Relayed, socket.socket, socket.socket]] = []
        self.seen: list[Relayed] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, name="balancer", daemon=True).start()

    def route(self, upstream: str) -> None:
        """Send new connections to the worker at ``upstream`` from now on."""
        with self._lock:
            self._upstream = upstream

    def cut(self, path: str) -> int:
        """Close every open connection whose request path starts with ``path``, both sides
        at once; how many."""
        with self._lock:
            cutting = [c for c in self._open if c[0].path.startswith(path)]
        for _, client, server in cutting:
            _close(client, server)
        for relayed, _, _ in cutting:
            relayed.ended.wait(10)
        return len(cutting)

    def watches(self) -> list[Relayed]:
        """The connections that watched a reply (``/api/watch``), in order."""
        with self._lock:
            return [r for r in self.seen if r.path.startswith("/api/watch")]

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        with self._lock:
            for _, client, server in self._open:
                _close(client, server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:  # a browser may open a connection and send nothing
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                _close(client)
                return
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        with self._lock:
            upstream = self._upstream
        target = urllib.parse.urlsplit(upstream)
        assert target.hostname is not None and target.port is not None
        lines = [lines[0]] + [
            f"Host: {target.netloc}" if line.lower().startswith("host:") else line
            for line in lines[1:]
        ]
        relayed = Relayed(lines[0].split(" ")[1], headers, upstream)
        try:
            server = socket.create_connection((target.hostname, target.port))
        except OSError:  # the worker is down: as a balancer with no health check would
            _close(client)
            return
        with self._lock:
            self.seen.append(relayed)
            self._open.append((relayed, client, server))
        server.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + rest)
        up = threading.Thread(target=_pump, args=(client, server, None), daemon=True)
        up.start()
        _pump(server, client, relayed.response)
        _close(client, server)  # the response is over (or cut): so is the request's side
        up.join(10)
        with self._lock:
            self._open = [c for c in self._open if c[0] is not relayed]
        relayed.ended.set()


def _pump(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            return
        try:
            sink.sendall(data)
        except OSError:
            return
        if record is not None:
            record += data


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
