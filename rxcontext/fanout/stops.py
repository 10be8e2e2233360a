"""Stop hints over Redis pub/sub: the owner of a reply hears ``cw.stop`` at once.

``cw.stop(reply_id)`` stores the request (the durable path: the owner's heartbeat looks for
requests every 0.25 s) and then, through :meth:`RedisFanout.announce
<rxcontext.fanout.redis.RedisFanout.announce>`, publishes the reply id on the owner's
channel ``<prefix>:w:<worker id>``. The owner's :class:`StopListener` is subscribed to its
own channel while the process serves replies; a message makes the heartbeat look at once
(:meth:`~rxcontext.heartbeat.Heartbeat.poke`), so the store stays the source of truth and
a message lost on the way (Redis down, not yet subscribed) costs only the poll's delay.

The listener's client is the fan-out's, pinned to fail fast (``timeout`` seconds, no
retries). When Redis is unreachable it tries again with a growing pause (at most
``reconnect_max`` seconds), and after each subscription it pokes the heartbeat once: a
hint published while it was away is looked for in the store at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from .. import _forks
from ..heartbeat import Heartbeat
from ..store.owner import worker_id

__all__ = ["StopListener", "stop_channel"]

_log = logging.getLogger("rxcontext.fanout")

KEEPALIVE = 5.0
"""Seconds of silence after which the listener pings Redis; no answer by the next ping
means the connection is dead (a restart behind a cut network) and it subscribes anew."""


def stop_channel(prefix: str, owner: str) -> str:
    """The pub/sub channel on which worker ``owner`` hears stop hints."""
    return f"{prefix}:w:{owner}"


class StopListener:
    """Subscribes to this process's stop channel while ``heartbeat`` serves replies, and
    pokes it on each hint (a daemon thread, ``rxcontext-stophint``)."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        heartbeat: Heartbeat,
        *,
        wait: float = 0.5,
        reconnect_max: float = 1.0,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.wait = wait
        self.reconnect_max = reconnect_max
        self._lock = threading.Lock()
        self._serving = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None
        self._pause = threading.Event()
        self.subscribed = threading.Event()
        """Set while subscribed to the channel (for tests and health checks)."""
        self.hints = 0
        """Hints heard (for tests)."""
        self.subscriptions = 0
        """Subscriptions made (the first, and one after each reconnection)."""
        heartbeat.serving.append(self.serving)
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: the thread runs (and the heartbeat serves) in the parent only, a
        # parent's thread may have held the lock, and the subscription is the parent's
        # (kept unused: its socket is the parent's). The child's heartbeat starts it anew,
        # on the child's own channel (its worker id is its own).
        _forks.keep(self._pubsub)
        self._lock = threading.Lock()
        self._serving = 0
        self._thread = None
        self._pubsub = None
        self._pause = threading.Event()
        self.subscribed = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the listener's thread is alive."""
        with self._lock:
            return self._thread is not None

    def serving(self, on: bool) -> None:
        """The heartbeat's thread started (True) or ended (False)."""
        with self._lock:
            self._serving += 1 if on else -1
            if self._serving > 0 and self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="rxcontext-stophint", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Unsubscribe and wait (briefly) for the thread to end; idempotent."""
        with self._lock:
            self._closed = True
            thread = self._thread
            pubsub = self._pubsub
        self._pause.set()
        if pubsub is not None:
            _interrupt(pubsub)
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.wait + 1.0)
        with contextlib.suppress(ValueError):
            self.heartbeat.serving.remove(self.serving)

    def _wanted(self) -> bool:
        with self._lock:
            return not self._closed and self._serving > 0

    def _run(self) -> None:
        while True:
            self._listen()
            with self._lock:
                # Still the listener's thread here: a serving(True) that came meanwhile
                # saw it alive and started none, so it listens again rather than end.
                self._pubsub = None
                self.subscribed.clear()
                if self._closed or self._serving <= 0:
                    self._thread = None
                    return

    def _listen(self) -> None:
        """Subscribe and poke the heartbeat on each hint until no longer wanted."""
        pause = quiet = pinged = 0.0
        pubsub: Any = None
        try:
            while self._wanted():
                try:
                    if pubsub is None:
                        pubsub = self._subscribe()
                        pause = quiet = pinged = 0.0
                    message = pubsub.get_message(timeout=self.wait)
                    if message is None:
                        quiet += self.wait
                        if quiet >= KEEPALIVE:
                            if pinged:
                                raise ConnectionError("no answer to a ping")
                            pubsub.ping()
                            pinged, quiet = 1.0, 0.0
                        continue
                    quiet = pinged = 0.0
                    if message.get("type") == "message":
                        self.hints += 1
                        self.heartbeat.poke()
                except Exception as error:
                    if pubsub is not None:
                        _log.debug("stop hints: Redis unreachable (%s); the poll serves", error)
                        _disconnect(pubsub)
                        pubsub = None
                        with self._lock:
                            self._pubsub = None
                    self.subscribed.clear()
                    pause = min(self.reconnect_max, max(0.05, pause * 2))
                    self._pause.wait(pause)
        finally:
            if pubsub is not None:
                _disconnect(pubsub)

    def _subscribe(self) -> Any:
        pubsub = self._client.pubsub()
        with self._lock:
            if self._closed:
                raise ConnectionError("closed")
            self._pubsub = pubsub
        try:
            pubsub.subscribe(stop_channel(self.prefix, worker_id()))
            # Subscribed once Redis says so: a hint published before that is not heard,
            # which is why the poke below follows the confirmation, not the request.
            while True:
                message = pubsub.get_message(timeout=self.wait)
                if message is None:
                    raise ConnectionError("no answer to SUBSCRIBE")
                if message.get("type") == "subscribe":
                    break
        except BaseException:
            _disconnect(pubsub)
            with self._lock:
                self._pubsub = None
            raise
        self.subscriptions += 1
        self.subscribed.set()
        self.heartbeat.poke()  # a hint sent while away was lost: look in the store now
        return pubsub


def _interrupt(pubsub: Any) -> None:
    """Wake the listener's thread from a read in progress (from another thread): shut its
    socket down, and leave closing the connection to the thread that uses it."""
    connection = getattr(pubsub, "connection", None)
    sock = getattr(connection, "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _disconnect(pubsub: Any) -> None:
    with contextlib.suppress(Exception):  # closing a connection that is already broken
        pubsub.close()
