"""The live tail of every watch of a process, read by one thread on one Redis connection.

A watch that has read its reply's log from the start waits for what comes next. Giving each
watch its own blocking ``XREAD`` (a thread and a connection each) made a process that
watches hundreds of replies wake hundreds of threads, each parsing its own small reply, a
few thousand times a second; in the scale-out benchmark its chunks reached it hundreds of
milliseconds late, queued behind each other for the GIL. Here one thread makes one
``XREAD BLOCK`` over every tailed stream, from the position it has read each to, keeps what
it reads in a short buffer per stream, and wakes only the watches of the streams that
moved.

A watch's read is served from that buffer when the buffer reaches back to the watch's
position; a watch that fell behind the buffer reads what it misses itself, at once, and then
waits on the buffer. A stream the thread was not reading yet is read by the thread from the
watch's position, with its next ``XREAD``: an ``awatch`` takes no executor thread for it (a
sync watch, on its own thread already, still reads what is there at once). Under load the
thread reads every few milliseconds and takes the stream up by itself; a watch that waited
5 ms for that interrupts the thread's blocking read (``CLIENT UNBLOCK``). A stream whose
epoch ended (its End read) is left out of the read until a watch asks for what follows (a
resume's next epoch), and a stream no watch has read for ``idle`` seconds is dropped (within
another ``idle / 4``).
When Redis fails, the waiting watches are told (their read answers None: the store serves
them), and the thread tries again with a growing pause.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import _forks
from .base import Position
from .entries import End, Entry

__all__ = ["Tail"]

_log = logging.getLogger("rxcontext.fanout")

Rows = Iterable[tuple[Any, Any]]
Parse = Callable[[Any, Any], tuple[Position, Entry]]


def _position(item: tuple[Position, Entry]) -> Position:
    return item[0]


_NUDGE_AFTER = 0.005
"""How long a read of a stream the tail thread is not reading yet leaves the thread to take
it up by itself (under load it reads every few milliseconds) before interrupting its
blocking read; then again every ``_NUDGE_EVERY`` seconds while it has not."""
_NUDGE_EVERY = 0.05


def _nudge_in(stream: _Stream, began: float, nudged: float, now: float) -> float:
    """Seconds until a read that began at ``began`` (and last nudged the tail thread at
    ``nudged``) is to nudge it; ``inf`` while the thread reads the stream."""
    if stream.included:
        return math.inf
    return max(0.0, began + _NUDGE_AFTER - now, nudged + _NUDGE_EVERY - now)


def _stream_id(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def _streams(found: Any) -> Iterable[tuple[Any, Rows]]:
    """``XREAD``'s answer as ``(key, rows)`` pairs (a dict on RESP3, a list on RESP2)."""
    if not found:
        return ()
    if isinstance(found, dict):
        return found.items()
    return ((key, rows) for key, rows in found)


class _Stream:
    """What the tail thread has read of one stream: every entry after ``base`` up to
    ``cursor``, in order."""

    __slots__ = (
        "base",
        "broken",
        "cursor",
        "cursor_id",
        "ended",
        "entries",
        "failed",
        "included",
        "moved",
        "used",
        "waiters",
    )

    def __init__(self, at: Position, lock: threading.Lock) -> None:
        self.base = at
        self.cursor = at
        self.cursor_id = _stream_id(at)  # as XREAD takes it
        self.entries: list[tuple[Position, Entry]] = []
        self.moved = threading.Condition(lock)
        self.included = False  # in the tail thread's current XREAD
        self.ended = False  # its epoch's End was read: not read on until a watch asks
        self.failed = 0.0  # when the tail thread last failed to read it (monotonic)
        self.broken = False  # it holds an entry the tail cannot parse: the store serves
        self.used = time.monotonic()
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []

    def wake(self, into: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]]) -> None:
        """Under the lock: wake the stream's threads, and gather its asyncio waiters."""
        self.moved.notify_all()
        for loop, future in self.waiters:
            into.setdefault(loop, []).append(future)
        self.waiters.clear()


_BEHIND: list[Entry] = []
"""What :meth:`Tail._ready` answers (by identity) to a watch the buffer no longer reaches."""


def _after(stream: _Stream, after: Position) -> list[Entry]:
    """The entries after ``after``; those up to it are dropped (the watch that asks has
    them; a second watch of the stream further behind reads what it misses itself). An
    ended reply's entries kept for long are garbage the collector walks: at 200 streams
    they made the watcher process's full collections 0.1-0.2 s long."""
    entries = stream.entries
    first = bisect.bisect_right(entries, after, key=_position)
    if first:
        stream.base = entries[first - 1][0]
        del entries[:first]
    return [entry for _, entry in entries]


def _resolve(futures: list[asyncio.Future[bool]]) -> None:
    """On the loop: the streams of these waiters moved (True: the tail took them off)."""
    for future in futures:
        if not future.done():
            future.set_result(True)


def _expire(future: asyncio.Future[bool]) -> None:
    """On the loop: the wait is over with nothing read (False: still a waiter)."""
    if not future.done():
        future.set_result(False)


def _wake_loops(waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]]) -> None:
    """One wake-up of each event loop for all of its waiters."""
    for loop, futures in waiting.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there now
            loop.call_soon_threadsafe(_resolve, futures)


class Tail:
    """One thread that tails many reply streams for their watches (see the module)."""

    def __init__(
        self,
        client: Any,
        reader: Any,
        parse: Parse,
        *,
        block: float = 1.0,
        idle: float = 5.0,
        keep: int = 256,
        reconnect_max: float = 1.0,
    ) -> None:
        self._client = client  # the tail thread's own (one connection)
        self._reader = reader  # shared: the watches' own reads, EXISTS, CLIENT UNBLOCK
        self._parse = parse
        self._block_ms = max(1, int(block * 1000))
        self._idle = idle
        self._sweep_every = min(1.0, idle / 4)
        self._sweep_at = 0.0
        self._keep = keep
        self._reconnect_max = reconnect_max
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._streams: dict[str, _Stream] = {}
        self._client_id: int | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: the tail thread runs in the parent only, a parent's thread may
        # have held the lock, and the streams are the parent's watches'. The next watch
        # starts a thread; the clients connect anew (redis-py's pools compare the pid).
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._streams = {}
        self._client_id = None
        self._thread = None

    # -- the watches' side ------------------------------------------------------------

    def read(
        self, key: str, after: Position, wait: float, cancelled: threading.Event
    ) -> list[Entry] | None:
        """Entries of ``key`` after ``after``, waiting up to ``wait`` seconds for some:
        ``[]`` when none came, None when the stream is gone or Redis is unreachable."""
        began = time.monotonic()
        deadline = began + wait
        if self._behind(key, after):
            caught = self._catch_up(key, after)
            if caught:
                return caught
        nudged = -math.inf
        while True:
            with self._lock:
                got, stream, left = self._ready(key, after, began, deadline)
                if got is not _BEHIND:
                    if got != []:
                        return got
                    if left <= 0 or cancelled.is_set():
                        break
                    now = time.monotonic()
                    nudge_in = _nudge_in(stream, began, nudged, now)
                    if nudge_in > 0:
                        stream.moved.wait(min(left, nudge_in))
                        continue
            if got is _BEHIND:  # what it missed, from Redis (None: Redis lost it too)
                return self._catch_up(key, after) or None
            self._interrupt()  # the tail thread is not reading this stream yet
            nudged = now
        return [] if self._reader.exists(key) else None

    async def aread(self, key: str, after: Position, wait: float) -> list[Entry] | None:
        """:meth:`read` for asyncio: the wait is a future the tail thread resolves (one
        wake-up of the loop for every watch of it whose stream moved), not a thread."""
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        deadline = began + wait
        if self._behind(key, after, new=False):
            caught = await asyncio.to_thread(self._catch_up, key, after)
            if caught:
                return caught
        nudged = -math.inf
        while True:
            with self._lock:
                got, stream, left = self._ready(key, after, began, deadline)
                if got is not _BEHIND:
                    if got != []:
                        return got
                    if left <= 0:
                        break
                    now = time.monotonic()
                    nudge_in = _nudge_in(stream, began, nudged, now)
                    if nudge_in > 0:
                        moved: asyncio.Future[bool] = loop.create_future()
                        waiter = (loop, moved)
                        stream.waiters.append(waiter)
            if got is _BEHIND:  # what it missed, from Redis (None: Redis lost it too)
                return await asyncio.to_thread(self._catch_up, key, after) or None
            if nudge_in <= 0:  # the tail thread is not reading this stream yet
                loop.run_in_executor(None, self._interrupt)
                nudged = now
                continue
            # A timer and the future, not asyncio.wait_for: this runs for every chunk of
            # every watch, and a wait_for cost 14 µs against 9 µs (5.7 µs for the bare
            # future; Python 3.11, 100,000 waits timed in one process).
            timer = loop.call_later(min(left, nudge_in), _expire, moved)
            woken = False
            try:
                woken = await moved
            finally:
                timer.cancel()
                if not woken:  # timed out or cancelled: still listed unless the tail woke it
                    with self._lock:
                        if waiter in stream.waiters:
                            stream.waiters.remove(waiter)
        return [] if await asyncio.to_thread(self._reader.exists, key) else None

    def _ready(
        self, key: str, after: Position, began: float, deadline: float
    ) -> tuple[list[Entry] | None, _Stream, float]:
        """Under the lock: what a read that began at ``began`` can answer now (the entries
        after ``after``; None if the tail failed since; ``[]``: nothing yet; ``_BEHIND``:
        the buffer no longer reaches back to ``after``, trimmed to ``keep`` or taken
        further by another watch of the stream), the stream, and the seconds left to wait."""
        stream = self._stream(key, after)
        if after < stream.base:
            return _BEHIND, stream, 0.0
        if stream.used < deadline:  # read all through this wait: not idle before its end
            stream.used = deadline
        got = _after(stream, after)
        if not got and (stream.failed >= began or stream.broken):
            return None, stream, 0.0
        return got, stream, deadline - time.monotonic()

    def _behind(self, key: str, after: Position, *, new: bool = True) -> bool:
        """Whether the buffer of ``key`` does not reach back to ``after`` (or, when ``new``,
        there is none)."""
        with self._lock:
            stream = self._streams.get(key)
            return new if stream is None else after < stream.base

    def _catch_up(self, key: str, after: Position) -> list[Entry]:
        """Read what follows ``after`` directly (at once); have the tail thread read
        ``key`` from then on."""
        found = self._reader.xread({key: _stream_id(after)}, count=512)
        entries = [self._parse(i, f) for _, rows in _streams(found) for i, f in rows]
        with self._lock:
            self._stream(key, entries[-1][0] if entries else after)
            self._start()
        return [entry for _, entry in entries]

    def _stream(self, key: str, at: Position) -> _Stream:
        """Under the lock: the buffer of ``key`` (a new one read from ``at``), marked used."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(at, self._lock)
            self._changed.notify()
            self._start()
        elif stream.ended and at >= stream.cursor:  # a watch waits for a next epoch
            stream.ended = stream.included = False
            self._changed.notify()
        stream.used = max(stream.used, time.monotonic())  # a wait's end, if later
        return stream

    def _interrupt(self) -> None:
        """Make the tail thread's blocking read return, so that it reads a new stream."""
        client_id = self._client_id
        if client_id is not None:
            try:
                self._reader.client_unblock(client_id)
            except Exception as error:  # it will see the stream within one block anyway
                _log.debug("fan-out: CLIENT UNBLOCK failed: %s", error)

    # -- the tail thread --------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="rxcontext-tail", daemon=True)
            self._thread.start()

    def _streams_to_read(self) -> list[str] | None:
        """Under the lock: the ``XREAD``'s keys and then their positions (None: closing).

        Streams no watch read for ``idle`` seconds are dropped, looked for at most every
        ``idle / 4`` seconds (a second at most): the tail knows the ended replies of the
        last ``idle`` seconds too (hundreds of streams when replies end by the hundred a
        second), and walking them all before every read was a sixth of the tail thread's
        time in the scale-out benchmark."""
        while not self._closing:
            now = time.monotonic()
            if now >= self._sweep_at:
                self._sweep_at = now + self._sweep_every
                for key in [k for k, s in self._streams.items() if now - s.used > self._idle]:
                    del self._streams[key]
            keys: list[str] = []
            ids: list[str] = []
            for key, stream in self._streams.items():
                if not stream.ended and not stream.broken:
                    stream.included = True
                    keys.append(key)
                    ids.append(stream.cursor_id)
            if keys:
                keys += ids
                return keys
            self._changed.wait(self._idle)
        return None

    def _run(self) -> None:
        try:
            self._read_all()
        finally:  # closing, or a defect: the next read starts a thread again
            waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                if not self._closing:  # its waits end now, and their watches go to the store
                    self._fail_all(waiting)
                    self._streams.clear()
            _wake_loops(waiting)

    def _read_all(self) -> None:
        pause = 0.0
        while True:
            with self._lock:
                streams = self._streams_to_read()
            if streams is None:
                return
            try:
                if self._client_id is None:
                    self._client_id = int(self._client.client_id())
                found = self._client.execute_command(  # redis-py's xread() rebuilds the
                    "XREAD", "COUNT", 512, "BLOCK", self._block_ms, "STREAMS", *streams
                )  # same arguments with a pass of its own
            except Exception as error:
                self._client_id = None
                pause = min(self._reconnect_max, max(0.05, pause * 2))
                self._fail(error, pause)
                continue
            pause = 0.0
            read: list[tuple[str, list[tuple[Position, Entry]]]] = []
            unreadable: list[str] = []
            for raw_key, rows in _streams(found):
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                try:
                    read.append((key, [self._parse(i, f) for i, f in rows]))
                except Exception as error:  # not our entries (a newer writer's, or foreign)
                    _log.debug("fan-out: %r holds an entry the tail cannot read: %s", key, error)
                    unreadable.append(key)
            waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
            with self._lock:
                for key in unreadable:  # its watches go to the store, as a direct read's do
                    stream = self._streams.get(key)
                    if stream is not None:  # not read again until the sweep drops it
                        stream.broken = True
                        stream.wake(waiting)
                for key, entries in read:
                    stream = self._streams.get(key)
                    if stream is None:
                        continue
                    for at, entry in entries:
                        if at > stream.cursor:
                            stream.entries.append((at, entry))
                            stream.cursor = at
                            stream.cursor_id = _stream_id(at)
                            # Nothing follows an End but a next epoch, after a resume:
                            # read no more of it (an ended watch is not read for) until
                            # a watch asks for what follows.
                            stream.ended = isinstance(entry, End)
                    if len(stream.entries) > self._keep:
                        cut = len(stream.entries) - self._keep
                        stream.base = stream.entries[cut - 1][0]
                        del stream.entries[:cut]
                    stream.wake(waiting)
            _wake_loops(waiting)

    def _fail(self, error: BaseException, pause: float) -> None:
        _log.debug("fan-out: the live tail's read failed: %s", error)
        waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
        with self._lock:
            self._fail_all(waiting)
        _wake_loops(waiting)
        with self._lock:
            self._changed.wait(pause)  # close() cuts the pause short

    def _fail_all(
        self, waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]]
    ) -> None:
        """Under the lock: every stream's reads that began before now fail (None), woken."""
        now = time.monotonic()
        for stream in self._streams.values():
            stream.failed = now
            stream.wake(waiting)

    def close(self) -> None:
        """Stop the tail thread (its blocking read is interrupted)."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        self._client.close()
