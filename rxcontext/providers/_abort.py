"""Break a provider stream's blocking read from another thread.

A sync stream waits for the server inside the socket's ``recv``: no Python code runs on its
thread until the read returns, and a generator that is running cannot be closed. Shutting the
connection's socket down (``shutdown(SHUT_RDWR)``) from another thread wakes that ``recv`` at
once: the read ends with an end of file or a transport error, and the HTTP response is done
with (httpcore does not pool a connection that was shut). This is how the sync driver ends a
reply at its ``Timeouts`` while the server is silent (see :mod:`rxcontext._watchdog`), and
how a dispose from another thread ends its read (``_SyncDriver._on_dispose``).

The driver makes a :class:`Breaker` current while it reads (:func:`breaking`); a provider
notes the HTTP response of each stream it opens there (:func:`noted`, or :func:`scope` with
:func:`note` when the SDK opens the response out of sight), and :meth:`Breaker.abort` shuts
that response's socket. httpx2 gives it for a plain or TLS HTTP/1.x connection
(``response.extensions["network_stream"].get_extra_info("socket")``). A stream whose socket
cannot be reached (a mock or custom transport, HTTP/2 where other streams share the
connection, the ``requests`` session google-genai uses with google-auth credentials, a model
that notes nothing) is not broken: its read ends when it returns, as before.

Nothing here imports an SDK: responses are read by duck typing.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["Breaker", "breaking", "note", "noted", "scope", "shut"]


def shut(response: Any) -> bool:
    """Shut the socket of ``response``'s HTTP/1.x connection; False if it cannot be reached."""
    extensions = getattr(response, "extensions", None)
    if not isinstance(extensions, Mapping):
        return False
    version = extensions.get("http_version")
    if not isinstance(version, bytes) or not version.startswith(b"HTTP/1"):
        return False  # HTTP/2: the connection carries other streams too
    get_extra_info = getattr(extensions.get("network_stream"), "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if not isinstance(sock, socket.socket):
        return False
    try:
        # The plain socket's own shutdown, also for an SSLSocket (whose override would drop
        # the TLS object under the reading thread's feet): only the file descriptor is shut.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        return False  # closed already
    return True


class Breaker:
    """The response a reader is reading; :meth:`abort` (any thread) shuts its socket.

    An abort that comes before the response is noted (the request still waiting for its
    headers) shuts the response as soon as it is noted.
    """

    __slots__ = ("aborted", "response")

    def __init__(self) -> None:
        self.response: Any = None
        self.aborted = False

    def abort(self) -> bool:
        """Shut the noted response's socket; True if a socket was shut."""
        self.aborted = True
        response = self.response
        return response is not None and shut(response)

    def note(self, response: Any) -> Any:
        """``response`` is the one being read now; returns the one noted before."""
        before, self.response = self.response, response
        if self.aborted:
            shut(response)
        return before


_current: ContextVar[Breaker | None] = ContextVar("rxcontext_breaker", default=None)


@contextlib.contextmanager
def breaking(breaker: Breaker) -> Iterator[Breaker]:
    """Make ``breaker`` the one streams opened here note their responses in."""
    token = _current.set(breaker)
    try:
        yield breaker
    finally:
        _current.reset(token)


def note(response: Any) -> None:
    """Note ``response`` in the current breaker (inside a :func:`scope`)."""
    breaker = _current.get()
    if breaker is not None:
        breaker.note(response)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Responses noted inside are forgotten on the way out (the one before comes back), so
    a closed stream's connection, which the pool may give to another request, is never
    shut."""
    breaker = _current.get()
    if breaker is None:
        yield
        return
    before = breaker.response
    try:
        yield
    finally:
        breaker.response = before


@contextlib.contextmanager
def noted(response: Any) -> Iterator[None]:
    """Note ``response`` while the block reads it (see :func:`scope`)."""
    breaker = _current.get()
    if breaker is None:
        yield
        return
    before = breaker.note(response)
    try:
        yield
    finally:
        breaker.response = before
