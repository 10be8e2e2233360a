"""The fan-out interface: how a reply's owner publishes what it delivers, and how watchers
in this or other processes read it back by position.

Publishing never waits and never raises into the stream: :meth:`Channel.chunk` is on the
hot path (one call per delivered chunk) and must be O(1) without I/O. Reading is by
position (``(epoch, seq)``), so a watcher's replay and its live tail are the same read and
a join can neither miss nor repeat a chunk.
"""

from __future__ import annotations

import threading
from typing import Literal, Protocol

from ..chunks import Chunk
from .entries import Entry

__all__ = ["Channel", "Fanout", "Position"]

Position = tuple[int, int]
"""``(epoch, seq)``: the last entry a watcher has applied."""


class Channel(Protocol):
    """One epoch of one reply, as its owner publishes it."""

    def chunk(self, chunk: Chunk) -> None:
        """A chunk the owner's subscriber just received (O(1), no I/O, never raises)."""
        ...

    def end(self, state: Literal["completed", "interrupted"]) -> None:
        """The reply ended; for ``completed``, after its records were committed."""
        ...


class Fanout(Protocol):
    """A live channel for replies (``MemoryFanout`` in one process, ``RedisFanout`` across)."""

    def open_channel(
        self, reply_id: str, epoch: int, text: str = "", thinking: str = ""
    ) -> Channel:
        """Start publishing epoch ``epoch`` of ``reply_id``, which starts from ``text`` /
        ``thinking`` (a resume's checkpoint; empty for a fresh reply)."""
        ...

    def read(
        self,
        reply_id: str,
        after: Position | None,
        *,
        epoch: int,
        wait: float,
        cancelled: threading.Event,
    ) -> list[Entry] | None:
        """Entries after ``after``; with None, the whole log of the newest epoch (at least
        ``epoch``), from its Begin or Snapshot. Waits up to ``wait`` seconds for something
        new (less if ``cancelled`` is set): ``[]`` when nothing came. None when live data is
        not available (no log for the reply, or the fan-out is unreachable)."""
        ...

    def close(self) -> None:
        """Stop publishing (what is queued is sent first, briefly); idempotent."""
        ...
