"""Live replies across workers: the owner publishes what it delivers, watchers read it.

``rxcontext.open(url, fanout="memory")`` (one process) or ``fanout="redis://host:6379/0"``
(many processes and hosts; the ``redis`` extra) attaches a :class:`Fanout` to the store;
``ContextWindow.watch(reply_id)`` / ``awatch`` read a reply live from it, and from the
store where live data is missing. The store stays the source of truth: nothing stored
depends on the fan-out.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..store import without_password
from .base import Channel, Fanout, Position
from .memory import MemoryFanout

__all__ = ["Channel", "Fanout", "MemoryFanout", "Position", "attach", "fanout_for", "open_fanout"]

_attached: weakref.WeakKeyDictionary[Any, Fanout] = weakref.WeakKeyDictionary()


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
    return spec


def attach(store: Any, fanout: Fanout) -> None:
    """Make ``fanout`` the store's (closed when the store is garbage-collected); a fan-out
    that carries stop hints (Redis) serves the store's ``cw.stop`` too."""
    _attached[store] = fanout
    weakref.finalize(store, fanout.close)
    serve_stops = getattr(fanout, "serve_stops", None)
    if serve_stops is not None:
        serve_stops(store)


def fanout_for(store: Any) -> Fanout | None:
    """The fan-out attached to ``store`` by ``rxcontext.open(..., fanout=...)``, if any."""
    return _attached.get(store)
