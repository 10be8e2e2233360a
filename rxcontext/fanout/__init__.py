"""Live replies across workers: the owner publishes what it delivers, watchers read it.

``rxcontext.open(url, fanout="memory")`` (one process) or ``fanout="redis://host:6379/0"``
(many processes and hosts; the ``redis`` extra) attaches a :class:`Fanout` to the store;
``ContextWindow.watch(reply_id)`` / ``awatch`` read a reply live from it, and from the
store where live data is missing. The store stays the source of truth: nothing stored
depends on the fan-out.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from ..store import without_password
from .base import Channel, Fanout, Position
from .memory import MemoryFanout

__all__ = ["Channel", "Fanout", "MemoryFanout", "Position", "attach", "fanout_for", "open_fanout"]

_attached: weakref.WeakKeyDictionary[Any, Fanout] = weakref.WeakKeyDictionary()
_users_lock = threading.Lock()
_users: dict[int, int] = {}
"""``id(fanout)``: how many stores it is attached to that are neither closed nor collected
(an entry lives only while that count is positive, so while their hooks hold the fan-out:
its id cannot be reused meanwhile)."""


def _forked() -> None:
    """In a forked child: the lock is new (a parent's thread may have held it at the fork)."""
    global _users_lock
    _users_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def open_fanout(spec: str | Fanout | None, **options: Any) -> Fanout | None:
    """A fan-out from ``spec``: ``"memory"``, a ``redis://`` / ``rediss://`` / ``unix://``
    URL, a ready :class:`Fanout`, or None (none)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "memory":
            return MemoryFanout(**options)
        if spec.startswith(("redis://", "rediss://", "unix://")):
            from .redis import RedisFanout

            fanout: Fanout = RedisFanout(spec, **options)
            return fanout
        raise ValueError(
            "fanout must be 'memory', a redis:// URL or None, not "
            f"{without_password(spec)!r}"  # never a password in a message
        )
    if not all(callable(getattr(spec, name, None)) for name in ("open_channel", "read", "close")):
        raise TypeError(
            "fanout must be 'memory', a redis:// URL, a fan-out (MemoryFanout, RedisFanout) "
            f"or None, not {type(spec).__name__}"
        )
    return spec


def attach(store: Any, fanout: Fanout) -> None:
    """Make ``fanout`` the store's: closed (its threads stopped, its connections closed,
    what it queued sent first) by ``store.close()``, or when the store is collected
    unclosed; a fan-out attached to several stores, with the last of them. A fan-out that
    carries stop hints (Redis) serves the store's ``cw.stop`` too."""
    _attached[store] = fanout
    with _users_lock:
        _users[id(fanout)] = _users.get(id(fanout), 0) + 1
    # Called once, by whichever comes first: the store's close or its collection.
    release = weakref.finalize(store, _release, fanout)
    serve_stops = getattr(fanout, "serve_stops", None)
    if serve_stops is not None:
        serve_stops(store)
    # After the hooks above (the heartbeat's, the stop listener's): the fan-out goes last.
    store.on_close(release)


def _release(fanout: Fanout) -> None:
    """One store of ``fanout`` closed (or was collected): close it if it was the last."""
    with _users_lock:
        left = _users.pop(id(fanout)) - 1
        if left:
            _users[id(fanout)] = left
            return
    fanout.close()


def fanout_for(store: Any) -> Fanout | None:
    """The fan-out attached to ``store`` by ``rxcontext.open(..., fanout=...)``, if any."""
    return _attached.get(store)
