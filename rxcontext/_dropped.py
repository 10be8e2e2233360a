"""Asyncio replies whose stream was dropped unclosed and is not settled yet.

A consumer that leaves ``async for chunk in cw.astream()`` with ``break`` and no
``aclosing`` drops the driver's generator while it holds a chunk. The event loop's
async-generator finaliser closes it, but only a couple of loop turns later (it schedules
``aclose()`` in a task); until then the reply is ``STREAMING``, and a request built
meanwhile in its context leaves it out as busy: the tool round the user was shown (or the
whole reply it broke on the final ``DONE`` of) is missing from it and appears in the request
after, before the prompt it answered — where the blocking twin, whose dispose settles the
reply at once, sends it in place.

So each asyncio driver of this process is noted here, by store and context, while it runs
(:func:`begin` to :func:`end`), and a new asyncio reply first waits for those of its context whose
generator is gone (:func:`dropped`): a generator's weak references are cleared as it
is dropped, before the finaliser schedules its close, so a dead one with a driver still
running is one whose close is on its way on this loop. A generator dropped in a reference
cycle is only dropped when the cyclic collector runs, and the blocking ``stream()`` /
``call()`` cannot wait for a loop's task: both build their request as before (the dropped
reply left out until it settles).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

__all__ = ["begin", "dropped", "end"]


class _Driving:
    """One asyncio driver, on ``loop``, while it runs; ``gone()``: its generator was dropped."""

    __slots__ = ("ended", "gone", "key", "loop")

    def __init__(
        self, key: tuple[int, str], loop: asyncio.AbstractEventLoop, gone: Callable[[], bool]
    ) -> None:
        self.key = key
        self.loop = loop
        self.gone = gone
        self.ended: asyncio.Future[None] = loop.create_future()


_lock = threading.Lock()
_running: dict[tuple[int, str], set[_Driving]] = {}


def _finalised_by(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a generator first iterated now is closed by ``loop`` once dropped."""
    finalizer = sys.get_asyncgen_hooks().finalizer
    return getattr(finalizer, "__self__", None) is loop


def begin(store: object, context_id: str, gone: Callable[[], bool]) -> _Driving | None:
    """Note the calling driver (on the running loop) for its context until :func:`end`."""
    loop = asyncio.get_running_loop()
    if not _finalised_by(loop):  # iterated outside the loop's hooks: no close would come
        return None
    entry = _Driving((id(store), context_id), loop, gone)
    with _lock:
        _running.setdefault(entry.key, set()).add(entry)
    return entry


def end(entry: _Driving | None) -> None:
    """The driver has ended (on its loop): whoever waits for it goes on."""
    if entry is None:
        return
    with _lock:
        entries = _running.get(entry.key)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del _running[entry.key]
    if not entry.ended.done():
        entry.ended.set_result(None)


def dropped(store: object, context_id: str) -> list[asyncio.Future[None]]:
    """What to wait for before a new reply in this context: the ends of its replies whose
    streams were dropped on the running loop (interrupted, or committed if they held the
    final ``DONE``). Usually none: nothing to await on the way to the first chunk."""
    entries = _running.get((id(store), context_id))
    if not entries:
        return []
    loop = asyncio.get_running_loop()
    with _lock:
        return [e.ended for e in entries if e.loop is loop and not e.ended.done() and e.gone()]
