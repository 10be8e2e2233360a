"""A forked child (gunicorn ``--preload``, multiprocessing's ``fork``) starts clean.

It inherits the parent's memory but runs only the thread that forked: every background
thread object it holds is one that runs in the parent only, every lock another thread held
at the fork stays held for good, and every connection shares its socket (or file locks)
with the parent's. Objects that hold any of those register with :func:`on_fork`; in the
child, before it goes on, each one's ``_forked()`` drops them: locks are made anew, threads
start again when next needed, connections are opened anew (at once or when next used).

Whether an inherited connection may be closed in the child is each object's call. A
PostgreSQL one may not: libpq's ``PQfinish`` sends the server a Terminate on the socket the
parent still uses, ending the parent's session. Such objects are handed to :func:`keep`,
which holds them, unused, for the life of the child, so the collector never finalizes them
in the meantime. (An idle SQLite connection, by contrast, must be closed: see
:meth:`rxcontext.store.sqlite.SQLiteStore._forked`.)
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Protocol

__all__ = ["Forkable", "keep", "on_fork"]

_log = logging.getLogger("rxcontext")


class Forkable(Protocol):
    def _forked(self) -> None:
        """In a forked child: drop what is the parent's (threads, held locks, connections)."""
        ...


_registered: weakref.WeakSet[Any] = weakref.WeakSet()
_kept: list[Any] = []

generation = 0
"""How many forks this process is from the one that imported this module: what began
under another generation (a reply, copied with the parent's memory) is the parent's."""


def on_fork(obj: Forkable) -> None:
    """Call ``obj._forked()`` in every child forked from this process while ``obj`` lives."""
    _registered.add(obj)


def keep(*inherited: Any) -> None:
    """Hold ``inherited`` (the parent's connections) unused, never closed, in this child."""
    _kept.extend(x for x in inherited if x is not None)


def _after_fork_in_child() -> None:
    global generation
    generation += 1
    for obj in list(_registered):
        try:
            obj._forked()
        except Exception:  # one object's failure must not leave the others the parent's
            _log.exception("resetting %r in a forked child failed", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
