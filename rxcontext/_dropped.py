"""Asyncio replies whose stream was dropped unclosed and is not settled yet.

A consumer that leaves ``async for chunk in cw.astream()`` with ``break`` and no
``aclosing`` drops the driver's generator while it holds a chunk. The event loop's
async-generator finaliser closes it, but only a couple of loop turns later (it schedules
``aclose()`` in a task); until then the reply is ``STREAMING``, and a request built
meanwhile in its context leaves it out as busy: the tool round the user was shown (or the
whole reply it broke on the final ``DONE`` of) is missing from it and appears in the request
after, before the prompt it answered — where the blocking twin, whose dispose settles the
reply at once, sends it in place.

So a new asyncio reply first waits for the replies of its context (its database and context
id, whichever store object of this process opened them) whose generator was dropped on the
running loop while their driver still runs (:func:`dropped`). Nothing is kept for a reply
until that happens: the driver's weak reference to its generator has the driver as its
callback (:func:`note`), and a generator's weak references are cleared as it is dropped,
before the finaliser schedules its close. Only then is the reply noted here, weakly: an
entry goes with its driver, and with its loop when that is closed with the close never run. A
generator dropped in a reference cycle is only dropped when the cyclic collector runs, and
the blocking ``stream()`` / ``call()`` cannot wait for a loop's task: both build their
request as before (the dropped reply left out until it settles).

That collector runs on whatever allocation sets it off, one made while this module's lock
is held included (on the same thread: the lock is not reentrant). So :func:`note` takes no
lock: it appends to a queue (atomic under the GIL) that :func:`dropped` and :func:`end`
take in under the lock.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import threading
import weakref
from typing import Any, Protocol

__all__ = ["dropped", "end", "finalised_by", "note"]


class Driver(Protocol):
    """What this module reads of an asyncio driver (``astreaming._Stopper``)."""

    loop: asyncio.AbstractEventLoop | None
    settled: asyncio.Future[None] | None
    """Made once its generator is dropped while it runs; done when it has ended."""
    ended: bool

    @property
    def run(self) -> Any: ...


_lock = threading.Lock()
_running: weakref.WeakKeyDictionary[Any, tuple[object, str]] = weakref.WeakKeyDictionary()
"""The drivers whose generator was dropped while they ran, each by its reply's database and
context, until they end (or are gone: a loop closed without running their close)."""
_noted: collections.deque[tuple[weakref.ref[Any], tuple[object, str]]] = collections.deque()
"""What :func:`note` saw since :func:`dropped` or :func:`end` last took it in (weakly: an
entry goes with its driver here too)."""


def _database(store: object) -> object:
    """Which database ``store`` opened: its file (resolved) or URL (without secrets), so two
    store objects of one database agree; a private in-memory one is its own store's."""
    path = getattr(store, "path", None)
    if not isinstance(path, str) or path in ("", ":memory:") or path.startswith("file::memory:"):
        return id(store)
    if "://" in path or path.startswith("file:"):
        return path
    return os.path.realpath(path)


def finalised_by(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a generator first iterated now is closed by ``loop`` once dropped."""
    finalizer = sys.get_asyncgen_hooks().finalizer
    return getattr(finalizer, "__self__", None) is loop


def note(driver: Driver) -> None:
    """``driver``'s generator was dropped (its weak reference's callback): if the driver
    still runs, its close is on its way on its loop; a new reply of its context waits."""
    loop = driver.loop
    if driver.ended or loop is None or loop.is_closed():
        return
    persister = driver.run.persister
    key = (_database(persister.store), persister.context_id)
    if driver.settled is None:
        driver.settled = loop.create_future()
    _noted.append((weakref.ref(driver), key))  # no lock: see the module's docstring


def _take_noted() -> None:
    """Move what :func:`note` queued into ``_running`` (held by ``_lock``); a driver that
    ended meanwhile (:func:`end` sets ``ended`` before it takes the lock) is left out."""
    while _noted:
        ref, key = _noted.popleft()
        driver = ref()
        if driver is not None and not driver.ended:
            _running[driver] = key


def _forget_closed() -> None:
    """Let go of the drivers of closed loops (held by ``_lock``): their close never runs (a
    loop closed without ``shutdown_asyncgens()``), and nothing can wait on those loops."""
    closed = [d for d in _running if d.loop is None or d.loop.is_closed()]
    for driver in closed:
        del _running[driver]


def end(driver: Driver) -> None:
    """The driver has ended (on its loop): whoever waits for it goes on."""
    driver.ended = True
    settled = driver.settled
    if settled is None:
        return
    with _lock:
        _take_noted()
        _running.pop(driver, None)
    if not settled.done():
        settled.set_result(None)


def dropped(store: object, context_id: str) -> tuple[asyncio.Future[None], ...]:
    """What to wait for before a new reply in this context: the ends of its replies whose
    streams were dropped on the running loop (interrupted, or committed if they held the
    final ``DONE``). Usually none: nothing to await on the way to the first chunk. A tuple:
    the driver keeps it for the whole reply, and the empty one is no object of its own."""
    if not _running and not _noted:
        return ()
    key = (_database(store), context_id)
    loop = asyncio.get_running_loop()
    with _lock:
        _take_noted()
        _forget_closed()
        drivers = [d for d, k in _running.items() if k == key]
    return tuple(
        [
            d.settled
            for d in drivers
            if d.loop is loop and d.settled is not None and not d.settled.done()
        ]
    )


def _forked() -> None:
    """In a forked child: the lock is new (a parent's thread may have held it at the fork).
    The parent's drivers stay noted: none is of a loop that runs here, so none is waited for."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
