"""``fanout="memory"``: live replies for watchers in the same process.

Each reply's epoch is a list of chunks the owner appends to (one ``list.append`` per
chunk, plus a wake-up only while a watcher is waiting); watchers read it by index. Logs of
ended replies are dropped ``keep_ended`` seconds after their end (and beyond
``max_ended`` of them), after which watchers are served from the store.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from .. import _forks
from ..chunks import Chunk
from .base import Position
from .entries import Begin, Chunks, End, Entry

__all__ = ["MemoryFanout"]


class _Log:
    """One epoch of one reply."""

    __slots__ = ("chunks", "cond", "end", "epoch", "replaced", "text", "thinking", "waiters")

    def __init__(self, epoch: int, text: str, thinking: str) -> None:
        self.epoch = epoch
        self.text = text
        self.thinking = thinking
        self.chunks: list[Chunk] = []
        self.end: End | None = None
        self.replaced = False  # a next epoch began (a takeover): its watchers move on
        self.cond = threading.Condition(threading.Lock())
        self.waiters = 0

    # The owner's side: the hot path takes no lock unless a watcher waits. A watcher raises
    # ``waiters`` under the lock *before* it looks at the length, and the owner appends
    # *before* it looks at ``waiters``: one of them always sees the other.
    def chunk(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        if self.waiters:
            with self.cond:
                self.cond.notify_all()

    def finish(self, state: Literal["completed", "interrupted"]) -> None:
        with self.cond:
            if self.end is None:
                self.end = End(self.epoch, len(self.chunks) + 1, state)
            self.cond.notify_all()

    def wait(self, seen: int, seconds: float, cancelled: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        with self.cond:
            self.waiters += 1
            try:
                while (
                    len(self.chunks) <= seen
                    and self.end is None
                    and not self.replaced
                    and not cancelled.is_set()
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.cond.wait(min(left, 0.1))  # a dispose sets `cancelled` without a notify
            finally:
                self.waiters -= 1


class _Channel:
    __slots__ = ("_fanout", "_log", "_reply_id", "chunk")

    def __init__(self, fanout: MemoryFanout, reply_id: str, log: _Log) -> None:
        self._fanout = fanout
        self._reply_id = reply_id
        self._log = log
        self.chunk: Callable[[Chunk], None] = log.chunk

    def end(self, state: Literal["completed", "interrupted"]) -> None:
        self._log.finish(state)
        self._fanout._mark_ended(self._reply_id, self._log)


class MemoryFanout:
    """In-process fan-out (``rxcontext.open(..., fanout="memory")``)."""

    def __init__(self, *, keep_ended: float = 600.0, max_ended: int = 10_000) -> None:
        self.keep_ended = keep_ended
        self.max_ended = max_ended
        self._logs: dict[str, _Log] = {}
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: the logs are the parent's replies', which go on (and end) in the
        # parent only (a watch of one here reads the store), and a parent's thread may
        # have held the locks.
        self._logs = {}
        self._ended = OrderedDict()
        self._lock = threading.Lock()

    def open_channel(
        self, reply_id: str, epoch: int, text: str = "", thinking: str = ""
    ) -> _Channel:
        log = _Log(epoch, text, thinking)
        with self._lock:
            old = self._logs.get(reply_id)
            if old is not None and old.epoch > epoch:
                log = _Log(epoch, text, thinking)  # a fenced writer: publish into the void
                return _Channel(self, reply_id, log)
            self._logs[reply_id] = log
            self._ended.pop(reply_id, None)
        if old is not None:
            with old.cond:
                old.replaced = True
                old.cond.notify_all()  # watchers of the old epoch move on to this one
        return _Channel(self, reply_id, log)

    def _mark_ended(self, reply_id: str, log: _Log) -> None:
        now = time.monotonic()
        with self._lock:
            if self._logs.get(reply_id) is log:
                self._ended[reply_id] = now
                self._ended.move_to_end(reply_id)
            while self._ended:
                oldest, at = next(iter(self._ended.items()))
                if now - at < self.keep_ended and len(self._ended) <= self.max_ended:
                    break
                del self._ended[oldest]
                self._logs.pop(oldest, None)

    def read(
        self,
        reply_id: str,
        after: Position | None,
        *,
        epoch: int,
        wait: float,
        cancelled: threading.Event,
    ) -> list[Entry] | None:
        with self._lock:
            log = self._logs.get(reply_id)
            ended_at = self._ended.get(reply_id)
            if ended_at is not None and time.monotonic() - ended_at >= self.keep_ended:
                del self._ended[reply_id]
                self._logs.pop(reply_id, None)
                log = None
        if log is None or log.epoch < epoch:
            return None
        if after is None or after[0] < log.epoch:
            return self._from(log, 0, head=True)
        if after[0] > log.epoch:
            return None
        seen = after[1]
        if len(log.chunks) <= seen and log.end is None:
            log.wait(seen, wait, cancelled)
            with self._lock:
                if self._logs.get(reply_id) is not log:
                    return []  # a new epoch began: the next read (after our epoch) gets it
        return self._from(log, seen, head=False)

    @staticmethod
    def _from(log: _Log, seen: int, *, head: bool) -> list[Entry]:
        end = log.end  # read before the chunks: every chunk precedes the end
        n = len(log.chunks)
        out: list[Entry] = [Begin(log.epoch, log.text, log.thinking)] if head else []
        if n > seen:
            out.append(Chunks(log.epoch, seen + 1, log.chunks[seen:n]))
        if end is not None and end.seq > seen:
            out.append(end)
        return out

    def close(self) -> None:
        with self._lock:
            self._logs.clear()
            self._ended.clear()
