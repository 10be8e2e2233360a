"""One daemon thread that ends blocking reads which outlast their time limit.

The sync driver reads a provider stream on its own thread, blocked in the socket while the
server is silent. For each stream with a time limit it holds a :class:`Watched` and, around
each read, stores when that read must end (``due``, on ``time.monotonic``) and ``inf`` once
it returned: a float store per read, no timer objects. The watchdog thread, started on first
use, sleeps until the earliest ``due`` among the watched streams, and when a ``due`` passes
while its read still waits it sets ``fired`` and calls the stream's ``abort`` (shuts its
socket, see :mod:`rxcontext.providers._abort`): the read returns and the driver ends the
reply with the timeout, as it does for a chunk that comes late.

Waking: a reader that stores a ``due`` earlier than the one the thread sleeps until
(:attr:`_Watchdog.wakes`) notifies it. The thread holds its lock from the moment it sets
``wakes`` to ``inf`` (so every store meanwhile notifies) through its scan until it waits, so
no store is missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from math import inf
from typing import Any

from reactivex.scheduler import VirtualTimeScheduler

from .providers._abort import Breaker, breaking

__all__ = ["Watched", "watchdog", "watching"]

_log = logging.getLogger("rxcontext.watchdog")


class Watched:
    """One stream's reads: ``due`` is when the current read must end (``inf``: not reading)."""

    __slots__ = ("abort", "due", "fired")

    def __init__(self, abort: Callable[[], object]) -> None:
        self.due = inf
        self.fired = False
        self.abort = abort

    def arm(self, now: float, limit: float | None, due: float | None) -> None:
        """The read starting at ``now`` must end within ``limit`` seconds (None: no limit)
        and by ``due`` (the deadline, if any): store when, and wake the watchdog if it
        sleeps past it."""
        ends = now + limit if limit is not None else inf
        if due is not None and due < ends:
            ends = due
        self.due = ends
        if ends < watchdog.wakes:
            watchdog.poke()


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._watched: dict[Watched, None] = {}
        self._thread: threading.Thread | None = None
        self.wakes = inf
        """When the thread looks next (``inf``: when told); a reader due earlier tells it."""

    def watch(self, abort: Callable[[], object]) -> Watched:
        """Watch a stream whose reads ``abort`` breaks (starting the thread if need be)."""
        watched = Watched(abort)
        with self._cond:
            self._watched[watched] = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rxcontext-read-limits", daemon=True
                )
                self._thread.start()
        return watched

    def unwatch(self, watched: Watched) -> None:
        watched.due = inf
        with self._cond:
            self._watched.pop(watched, None)

    def poke(self) -> None:
        """A read is due before :attr:`wakes`: look again now."""
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while True:
                self.wakes = inf
                now = time.monotonic()
                soonest = inf
                for watched in self._watched:
                    due = watched.due
                    if due > now:
                        soonest = min(soonest, due)
                    elif not watched.fired:
                        watched.fired = True
                        try:
                            watched.abort()
                        except Exception:  # never let one stream stop the watch of others
                            _log.exception("breaking a read that outlasted its limit failed")
                self.wakes = soonest
                cond.wait(None if soonest == inf else soonest - now)

    def _forked(self) -> None:
        # The child has no thread and none of the parent's readers.
        self.__init__()  # type: ignore[misc]


watchdog = _Watchdog()
"""The process's watchdog."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=watchdog._forked)


@contextlib.contextmanager
def watching(time: Any, breaker: Breaker | None = None) -> Iterator[Watched | None]:
    """Let the watchdog break the reads made inside at their limits: a :class:`Watched` for
    the reader to set each read's ``due`` on, or None on virtual time (``time``, a
    scheduler, is a ``VirtualTimeScheduler``), where a late chunk is refused when its read
    returns instead. ``breaker``: the one the reader made current already (else one is
    made current here)."""
    if isinstance(time, VirtualTimeScheduler):
        yield None
        return
    own = breaker is None
    if breaker is None:
        breaker = Breaker()
    watched = watchdog.watch(breaker.abort)
    try:
        with breaking(breaker) if own else contextlib.nullcontext(breaker):
            yield watched
    finally:
        watchdog.unwatch(watched)
