"""A TCP proxy on loopback that can partition its clients from the server and heal.

One proxy per client process (or per client) to fault: give the client
``127.0.0.1:<proxy.port>`` instead of the server's address.

* ``pass`` (the start): bytes go both ways.
* :meth:`blackhole`: a real partition, not a refused connection. New connections are
  accepted (the client's connect succeeds, as it would towards a host whose replies are
  dropped) and open ones stay open, but no byte goes either way: what was read stays
  held in the proxy, what was not read stays in the kernel's buffers. Clients see
  nothing but timeouts.
* :meth:`heal`: forwarding resumes on every connection, the held bytes first (TCP would
  retransmit them): a command a client gave up on still reaches the server, late, as on
  a real network.
* :meth:`cut`: every open connection is closed at once (a reset link).
* :attr:`connect_delay`: seconds each new connection waits before it reaches the server (a
  slow link's connect: handshake and authentication round trips), open ones unaffected.
* :meth:`stall_replies`: the server's bytes to the connections open now are held (a reply
  still in flight on a slow link, the server done with it), new connections unaffected;
  :meth:`heal` delivers them.
* :meth:`hold_statements`: what a client sends containing ``marker`` (part of a
  statement's text) is held, on open and new connections, until :meth:`heal`; connects
  and other statements go through (a pooler that accepts a client and queues its
  statement while every server connection is busy).
* :meth:`lose_commit_acks`: a PostgreSQL connection whose client sent ``marker`` (part of
  a statement's text) gets every reply until the server's ``COMMIT`` tag, then is closed
  without it: the transaction committed on the server, the client lost the connection
  during ``COMMIT`` (an ambiguous outcome). :attr:`acks_lost` counts them.

Threads and blocking sockets; loopback only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

__all__ = ["TcpProxy"]


class TcpProxy:
    """Listen on 127.0.0.1:<port> and forward to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = False
        self._marker: bytes | None = None
        self._gates: list[threading.Event] = []
        self._held: bytes | None = None
        self._release = threading.Event()
        self._release.set()
        self.connect_delay = 0.0
        self.acks_lost = 0
        self.on_ack_lost: list[threading.Event] = []
        """Set (and dropped) as the next ack is lost: waits without sleeping."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="tcpproxy-accept").start()

    @property
    def url(self) -> str:
        """``redis://`` URL of this proxy (for a Redis upstream)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole(self) -> None:
        """Stop every byte, both ways, on open and new connections; close none."""
        self._open.clear()

    def heal(self) -> None:
        """Forward again, what was held first."""
        self._open.set()
        self._held = None
        self._release.set()
        with self._lock:
            gates = list(self._gates)
        for gate in gates:
            gate.set()

    def hold_statements(self, marker: bytes) -> None:
        """Hold what a client sends containing ``marker`` (until :meth:`heal`)."""
        self._held = marker
        self._release.clear()

    def stall_replies(self) -> None:
        """Hold what the server sends to the connections open now (until :meth:`heal`)."""
        with self._lock:
            gates = list(self._gates)
        for gate in gates:
            gate.clear()

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def cut(self) -> None:
        """Close every open connection (the listener stays)."""
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            self._close(s)

    def lose_commit_acks(self, marker: bytes | None) -> None:
        """From now on (None: no more), lose the ``COMMIT`` reply of the transactions whose
        statements contain ``marker`` (see the module docstring)."""
        self._marker = marker

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # partitioned: the connect goes nowhere until healed
        if self.connect_delay:
            time.sleep(self.connect_delay)  # the slow link's latency, not a wait for a thread
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            self._close(client)
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._socks.update((client, server))
        if closed:  # outside the lock: _close takes it (a connect held by a partition)
            self._close(client, server)
            return
        marked: list[bool] = [False]  # the client sent the marker (this connection)
        gate = threading.Event()  # the server's bytes to this client pass (stall_replies)
        gate.set()
        with self._lock:
            self._gates.append(gate)
        for a, b, up in ((client, server, True), (server, client, False)):
            threading.Thread(target=self._pump, args=(a, b, up, marked, gate), daemon=True).start()

    def _pump(
        self,
        source: socket.socket,
        dest: socket.socket,
        up: bool,
        marked: list[bool],
        gate: threading.Event,
    ) -> None:
        try:
            while True:
                self._open.wait()
                data = source.recv(65536)
                if not data:
                    break
                self._open.wait()  # partitioned while reading: hold it until healed
                if not up:
                    gate.wait()  # stalled replies: held until healed
                held = self._held
                if up and held is not None and held in data:
                    self._release.wait()  # a statement queued: held until healed
                marker = self._marker
                if up and marker is not None and marker in data:
                    marked[0] = True  # before it is sent: the server's reply comes after
                elif not up and marked[0] and b"COMMIT\x00" in data:
                    with self._lock:
                        self.acks_lost += 1
                        waiting, self.on_ack_lost = self.on_ack_lost, []
                    for event in waiting:
                        event.set()
                    break  # committed on the server; the client never hears of it
                dest.sendall(data)
        except OSError:
            pass
        self._close(source, dest)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._socks.discard(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self.heal()
        self._listener.close()
        self.cut()
