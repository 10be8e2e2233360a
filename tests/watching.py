"""Helpers for the watch tests: an owner that streams a reply on a thread of its own and
can be held before any chunk, and a watcher that collects what ``cw.watch`` gives (or
``cw.awatch``, on an event loop of its own thread)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder
from rxcontext.records import RecordType

__all__ = ["AsyncWatcher", "Owner", "Watcher", "published", "stored_text", "text_of", "until"]

WAIT = 30.0  # generous: a hang fails the test instead of blocking the suite


def until(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Wait (bounded) until ``check()`` holds; False if it never did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def published(fanout: Any, reply_id: str, seq: int, timeout: float = WAIT) -> bool:
    """Wait (bounded) until a Redis fan-out's log of ``reply_id`` holds chunk ``seq`` (its
    writer sends every 20 ms: a watcher that came sooner would begin from the store's
    checkpoint). True at once for any other fan-out (they publish as they deliver)."""
    reader = getattr(fanout, "_reader", None)
    if reader is None:
        return True

    def there() -> bool:
        top = reader.xrevrange(fanout.key(reply_id), "+", "-", count=1)
        return bool(top) and int(top[0][0].split(b"-")[1]) >= seq

    return until(there, timeout)


def text_of(chunks: list[Chunk]) -> str:
    """The text a consumer of ``chunks`` ends with (REWIND applied)."""
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.text


def stored_text(cw: ContextWindow, reply_id: str) -> str:
    """The stored record's text of a reply: its MODEL_RESP records, in order."""
    records = cw.store.reply_records(reply_id)
    return "".join(r.content for r in records if r.type is RecordType.MODEL_RESP)


class Owner:
    """``cw.stream(reply_id=...)`` subscribed on a thread; ``hold(k)`` stops it right before
    it delivers chunk ``k`` (0: before the first), so exactly ``k`` were delivered."""

    def __init__(
        self,
        cw: ContextWindow,
        reply_id: str,
        *,
        hold: int | None = None,
        gate: threading.Semaphore | None = None,
    ) -> None:
        self.cw = cw
        self.gate = gate
        """If given, each chunk waits for a permit before it is delivered."""
        self.reply_id = reply_id
        self.hold = hold
        self.delivered: list[Chunk] = []
        self.held = threading.Event()
        self.begun = threading.Event()
        """Set once the reply's row exists (a watcher can find it from then on)."""
        self.go = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._seen = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _chunk(self, _: Chunk) -> None:
        if self.gate is not None:
            assert self.gate.acquire(timeout=WAIT), "the test never let this chunk go"
        if self._seen == self.hold:
            self.held.set()
            self.go.wait(WAIT)
        self._seen += 1

    def _run(self) -> None:
        hook = rxops.middleware(on_start=self.begun.set, on_chunk=self._chunk)
        try:
            self.cw.stream(hook, reply_id=self.reply_id).subscribe(
                self.delivered.append, self._failed, lambda: None
            )
        finally:
            self.done.set()

    def _failed(self, error: Exception) -> None:
        self.error = error

    def start(self) -> Owner:
        self.thread.start()
        waits = [self.begun] if self.hold is None else [self.held]
        for event in waits:
            while not event.is_set() and not self.done.is_set():
                event.wait(0.01)
        return self

    def release(self) -> None:
        self.go.set()

    def join(self) -> None:
        self.go.set()
        if self.gate is not None:
            self.gate.release(10_000)
        assert self.done.wait(WAIT), "the owner never finished"
        self.thread.join(WAIT)


class Watcher:
    """``cw.watch(reply_id)`` subscribed on a thread; collects chunks and the ending."""

    def __init__(self, cw: ContextWindow, reply_id: str, **options: Any) -> None:
        self.chunks: list[Chunk] = []
        self.error: BaseException | None = None
        self.completed = False
        self.done = threading.Event()
        self.on_chunk: Callable[[Chunk], None] | None = None
        self._changed = threading.Condition()
        self._cw, self._reply_id, self._options = cw, reply_id, options
        self._observable = self._open()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _next(self, chunk: Chunk) -> None:
        with self._changed:
            self.chunks.append(chunk)
            self._changed.notify_all()
        if self.on_chunk is not None:
            self.on_chunk(chunk)

    def _open(self) -> Any:
        return self._cw.watch(self._reply_id, **self._options)

    def _run(self) -> None:
        def failed(error: Exception) -> None:
            self.error = error

        def completed() -> None:
            self.completed = True

        try:
            self._observable.subscribe(self._next, failed, completed)
        finally:
            self.done.set()

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def join(self) -> Watcher:
        assert self.done.wait(WAIT), "the watcher never ended"
        return self

    def wait_for(self, text: str, timeout: float = WAIT) -> bool:
        """Block until what this watcher shows is ``text`` (False after ``timeout``)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.text == text, timeout)

    @property
    def text(self) -> str:
        return text_of(self.chunks)

    def kinds(self) -> list[ChunkKind]:
        return [c.kind for c in self.chunks]


class AsyncWatcher(Watcher):
    """The same record as :class:`Watcher`, of ``async for chunk in cw.awatch(reply_id)``
    run by ``asyncio.run`` on a thread of its own."""

    def _open(self) -> Any:
        return None

    def _run(self) -> None:
        async def follow() -> None:
            async for chunk in self._cw.awatch(self._reply_id, **self._options):
                self._next(chunk)

        try:
            asyncio.run(follow())
            self.completed = True
        except Exception as error:
            self.error = error
        finally:
            self.done.set()
