"""``fanout="redis://host:6379/0"``: live replies across processes and hosts, on Redis
Streams (redis-py; ``pip install 'rxcontext[redis]'``).

One stream per reply, ``<prefix>:{<reply_id>}:s``. Entry ids are ``<epoch>-<seq>``: a
Begin is ``e-0``, a batch of chunks is named by its last chunk's seq, the End follows the
last chunk. Ids must grow, so a retried batch is refused as a duplicate and, once a new
owner (epoch ``e+1``) has written, a fenced old owner's writes are refused too. Watchers
read with ``XRANGE`` from their epoch's Begin, then from the last id they applied: replay
and tail are the same log read by position. The tails of all of a process's watches are
read by one thread with one ``XREAD BLOCK`` over their streams (:mod:`.redis_tail`).

The owner never waits on Redis: :meth:`_Channel.chunk` appends to a bounded in-memory
queue; one writer thread per process sends what is queued every ``flush_every`` seconds
as one pipeline (one ``XADD`` per reply with new chunks, ``MAXLEN ~`` and a sliding
``PEXPIRE``). Clients are pinned to fail fast (``socket_timeout``,
``socket_connect_timeout``, no retries: redis-py 8's defaults take about 99 s to fail a
write to an unreachable server). While Redis is unreachable the writer keeps each open
reply's chunks and tries again with a growing pause (at most ``reconnect_max`` seconds);
when it is back it checks each reply's stream and, where entries were lost (a restart,
an eviction), writes a Snapshot (the epoch's start and every chunk so far) so the log is
whole again. A reply with more than ``max_queue`` chunks unsent (queued, or taken from
the queue and not yet sent: Redis slow or unreachable), or one of whose entries cannot be
encoded (a bug: never the other replies' failure), is given up: what it kept is let go,
the reply too once it ends, and its stream is deleted when Redis answers; its watchers are
served from the store. Entries are encoded to UTF-8 before they go into the pipeline,
a lone surrogate (half an emoji cut between two deltas) as a JSON escape.

The fan-out also carries stop hints (:mod:`rxcontext.fanout.stops`): :meth:`announce`
queues a ``PUBLISH`` on the owner's channel for the writer thread, and the owner's
:class:`~rxcontext.fanout.stops.StopListener` pokes its heartbeat when one arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from .. import _forks
from .._urls import at_after
from ..chunks import Chunk
from ..errors import MissingDependency
from ..store import without_password
from .base import Position
from .entries import Begin, Chunks, End, Entry, Snapshot, decode_chunk, dumps, encode_chunk
from .packing import client_options
from .redis_tail import Tail

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise MissingDependency("redis", "redis", str(exc)) from exc

__all__ = ["RedisFanout"]

_log = logging.getLogger("rxcontext.fanout")
_MAX_SEQ = 18446744073709551615
_Ended = Literal["completed", "interrupted"]


def _parse_id(raw: bytes | str) -> Position:
    text = raw.decode() if isinstance(raw, bytes) else raw
    a, _, b = text.partition("-")
    return int(a), int(b)


def _entry_at(raw_id: bytes | str, fields: Any) -> tuple[Position, Entry]:
    """An entry and its position from its id and fields: a dict, or the flat
    ``[name, value, …]`` list of an unparsed reply (the tail's ``XREAD``)."""
    position = _parse_id(raw_id)
    if not isinstance(fields, dict):
        pairs = iter(fields)
        fields = dict(zip(pairs, pairs, strict=False))
    return position, _decode(position, fields)


def _decode(position: Position, fields: dict[bytes, bytes]) -> Entry:
    epoch, seq = position
    kind = fields.get(b"k", b"")
    data = json.loads(fields.get(b"d", b"null"))
    if kind == b"c":
        return Chunks(epoch, int(fields[b"f"]), [decode_chunk(c) for c in data])
    if kind == b"b":
        return Begin(epoch, data.get("text", ""), data.get("thinking", ""))
    if kind == b"s":
        return Snapshot(
            epoch,
            seq,
            data.get("text", ""),
            data.get("thinking", ""),
            [(int(s), decode_chunk(c)) for s, c in data.get("chunks", [])],
        )
    state: _Ended = "completed" if data == "completed" else "interrupted"
    return End(epoch, seq, state)


class _Channel:
    """One epoch of one reply. ``chunk``/``end`` run on the owner's thread (appends to
    ``inbox``); everything else belongs to the writer thread."""

    __slots__ = (
        "begun",
        "chunk",
        "chunks",
        "confirmed",
        "dead",
        "dropped",
        "end_seq",
        "ended",
        "epoch",
        "expire_at",
        "fanout",
        "inbox",
        "key",
        "pending",
        "reply_id",
        "seq",
        "text",
        "thinking",
        "unsure",
    )

    def __init__(self, fanout: RedisFanout, reply_id: str, epoch: int, text: str, thinking: str):
        self.fanout = fanout
        self.inbox: collections.deque[Chunk | str] = collections.deque()
        self.chunk: Callable[[Chunk], None] = self.inbox.append
        """A chunk the owner's subscriber just received: one ``deque.append`` (the writer
        thread empties the inbox every ``flush_every`` and gives up on a reply with more
        than ``max_queue`` chunks unsent, in its inbox or taken from it)."""
        self.reply_id = reply_id
        self.key = fanout.key(reply_id)
        self.epoch = epoch
        self.text = text
        self.thinking = thinking
        self.seq = 0  # chunks taken from the queue
        self.chunks: list[tuple[int, Chunk]] = []  # every chunk of the epoch (for snapshots)
        self.pending: list[tuple[int, Chunk]] = []  # not yet sent
        self.confirmed = -1  # highest seq Redis has (0: the Begin)
        self.begun = False
        self.ended: _Ended | None = None
        self.end_seq = 0
        self.dead = False  # fenced, or given up: publish nothing more
        self.dropped = False  # given up (too much unsent, or not encodable): stream deleted
        self.unsure = False  # a write failed: look at the stream before the next one
        self.expire_at = 0.0

    def end(self, state: _Ended) -> None:
        self.inbox.append(state)
        self.fanout._wake.set()


def _misread(url: str) -> bool:
    """Whether an ``@`` comes after the end urllib (which redis-py reads URLs with) gives the
    user name, password and host: the first ``/``, ``?`` or ``#``. Such a password's first
    piece would be read as the port, and urllib's error (or the connection's) would quote it."""
    return at_after(url.partition("://")[2], "/?#")


_READERS = 32
"""Connections the watches' own reads may hold at once (each a short command: the log's
head, a catch-up, ``EXISTS``, ``CLIENT UNBLOCK``); a read waits up to ``timeout`` for one,
then is served by the store, as when Redis does not answer."""
_IDLE_READERS = 4
"""Of those, how many stay open while no watch reads."""


class _ReaderPool(redis.BlockingConnectionPool):
    """The watches' connections: at most ``_READERS`` (a read waits for one), and at most
    ``_IDLE_READERS`` kept open idle. redis-py keeps every connection it made open until
    the pool is closed (it has no idle timeout): after a burst of watchers (a page reloaded
    by many at once) a process held one per watcher of the burst, for good, counted against
    the server's ``maxclients`` that every worker shares. Those idle longest are closed as
    connections come back."""

    def release(self, connection: Any) -> None:
        super().release(connection)  # type: ignore[no-untyped-call]
        queue: Any = self.pool  # a LifoQueue: connections on top, empty slots (None) below
        with queue.mutex:
            held = queue.queue
            idle = [c for c in held if c is not None]
            spare = idle[:-_IDLE_READERS]
            if spare:
                held[:] = [None] * (len(held) - _IDLE_READERS) + idle[-_IDLE_READERS:]
        for spent in spare:
            with contextlib.suppress(ValueError):
                self._connections.remove(spent)
            spent.disconnect()


class RedisFanout:
    """Fan-out over Redis Streams; see the module docstring for what it guarantees."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rx",
        flush_every: float = 0.02,
        live_ttl: float = 3600.0,
        end_ttl: float = 600.0,
        maxlen: int = 100_000,
        max_queue: int = 100_000,
        timeout: float = 0.5,
        reconnect_max: float = 1.0,
    ) -> None:
        if _misread(url):
            raise ValueError(
                f"cannot use the fan-out URL {without_password(url)!r}: a '/', '?' or '#' in its"
                " password would be read as the end of the host; percent-encode it"
                " (/ as %2F, ? as %3F, # as %23, @ as %40)"
            )
        self.prefix = prefix
        self.flush_every = flush_every
        self.live_ttl_ms = int(live_ttl * 1000)
        self.end_ttl_ms = int(end_ttl * 1000)
        self.maxlen = maxlen
        self.max_queue = max_queue
        self.timeout = timeout
        self.reconnect_max = reconnect_max
        # Pinned: fail fast, never retry inside redis-py (its defaults: ~99 s to fail).
        packing = client_options()
        self._writer = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            **packing,
        )
        self._reader = redis.Redis(
            connection_pool=_ReaderPool.from_url(
                url,
                max_connections=_READERS,
                timeout=timeout,
                socket_timeout=timeout + 2.0,  # longer than any XREAD BLOCK (at most 1 s)
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
                **packing,
            )
        )
        self._reader.auto_close_connection_pool = True  # as from_url's: close() closes it
        tail = redis.Redis.from_url(
            url,
            socket_timeout=timeout + 2.0,  # longer than its XREAD BLOCK (1 s)
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            **packing,
        )
        # The tail's XREAD answers (hundreds of streams a read, hundreds of reads a second)
        # are taken apart here, not first into redis-py's dicts of every entry's fields.
        tail.set_response_callback("XREAD", lambda response, **_: response)
        self._tail = Tail(
            tail,
            self._reader,
            _entry_at,
            reconnect_max=reconnect_max,
        )
        self._new: collections.deque[_Channel] = collections.deque()
        self._hints: collections.deque[tuple[str, str]] = collections.deque(maxlen=1024)
        self.stop_listeners: list[Any] = []
        """The :class:`~rxcontext.fanout.stops.StopListener` of each store served."""
        self._open: dict[int, _Channel] = {}
        # Streams of replies given up, to delete (the replies themselves are let go once
        # ended): bounded, as one missed lives only until its expiry.
        self._doomed: collections.deque[str] = collections.deque(maxlen=10_000)
        self._wake = threading.Event()
        self._closing = False  # the writer's last turns: send what is queued, then end
        self._closed = False
        self._close_lock = threading.Lock()
        self._down_until = 0.0
        self._pause = 0.0
        self.connected = True
        """Whether the writer's last attempt reached Redis (for tests and health checks)."""
        self._thread: threading.Thread | None = None
        self._start_writer()
        _forks.on_fork(self)

    def _start_writer(self) -> None:
        """Start the writer thread if it does not run (in a forked child, with its first
        reply or hint)."""
        with self._close_lock:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name="rxcontext-fanout", daemon=True)
                thread.start()
                self._thread = thread

    def _forked(self) -> None:
        # A forked child: the writer thread runs in the parent only, a parent's thread may
        # have held the locks, and the replies and hints queued are the parent's to send.
        # The clients' connection pools make connections of the child's own at their next
        # use (redis-py's pools compare the pid), leaving the parent's sockets alone.
        self._wake = threading.Event()
        self._close_lock = threading.Lock()
        self._thread = None
        self._new.clear()
        self._open.clear()
        self._hints.clear()
        self._doomed.clear()
        self._down_until = 0.0
        self._pause = 0.0
        self.connected = True

    def key(self, reply_id: str) -> str:
        """The stream key of a reply (the hash tag keeps a reply's keys in one slot)."""
        return f"{self.prefix}:{{{reply_id}}}:s"

    # -- the owner's side ----------------------------------------------------------------

    def open_channel(
        self, reply_id: str, epoch: int, text: str = "", thinking: str = ""
    ) -> _Channel:
        channel = _Channel(self, reply_id, epoch, text, thinking)
        if self._thread is None:
            self._start_writer()
        self._new.append(channel)
        self._wake.set()
        return channel

    def _overflow(self, channel: _Channel) -> None:
        self._give_up(channel)
        _log.warning(
            "fan-out: reply %r queued more than %d chunks unsent; it is no longer published "
            "live (its watchers read the store)",
            channel.reply_id,
            self.max_queue,
        )

    def _give_up(self, channel: _Channel) -> None:
        """Publish nothing more of ``channel``: its stream is deleted at the next send, its
        queued chunks are dropped as drained, and its watchers read the store."""
        channel.dead = channel.dropped = True
        channel.chunks = []
        channel.pending = []
        self._doomed.append(channel.key)

    # -- stop hints (rxcontext.fanout.stops) ----------------------------------------------

    def announce(self, reply_id: str, owner: str | None) -> None:
        """Tell worker ``owner`` that ``reply_id`` was asked to stop (the request is already
        stored): queued for the writer thread, so the caller never waits on Redis."""
        if owner:
            if self._thread is None:
                self._start_writer()
            self._hints.append((owner, reply_id))
            self._wake.set()

    def serve_stops(self, store: Any) -> None:
        """Send ``store``'s stop requests as hints through Redis, and listen for this
        process's while it serves ``store``'s replies (``rxcontext.open`` calls this)."""
        from ..heartbeat import heartbeat_for, set_stop_hint
        from .stops import StopListener

        listener = StopListener(
            self._writer,
            self.prefix,
            heartbeat_for(store),
            wait=self.timeout,
            reconnect_max=self.reconnect_max,
        )
        self.stop_listeners.append(listener)
        set_stop_hint(store, self)
        store.on_close(lambda: self._unserve(listener))

    def _unserve(self, listener: Any) -> None:
        listener.close()
        with contextlib.suppress(ValueError):
            self.stop_listeners.remove(listener)

    def _announce(self) -> None:
        from .stops import stop_channel

        pipe = self._writer.pipeline(transaction=False)
        while self._hints:
            owner, reply_id = self._hints.popleft()
            pipe.publish(stop_channel(self.prefix, owner), reply_id)
        pipe.execute()  # a hint lost on the way costs its owner only the poll's delay
        self.connected = True
        self._pause = 0.0

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            closing = self._closing
            self._drain()
            if self._hints and time.monotonic() >= self._down_until:
                try:
                    self._announce()
                except Exception as error:
                    self._failed(error)
            if time.monotonic() >= self._down_until and (self._open or self._doomed):
                try:
                    self._flush()
                except Exception as error:  # never let the writer die: the owner must not notice
                    self._failed(error)
            if closing and (not self._unsent() or time.monotonic() >= self._close_by):
                return
            idle = not self._open and not self._new
            self._wake.wait(1.0 if idle else self.flush_every)
            self._wake.clear()

    _close_by = 0.0

    def _drain(self) -> None:
        new = self._new
        while new:
            channel = new.popleft()
            self._open[id(channel)] = channel
        for channel in list(self._open.values()):
            inbox = channel.inbox
            # Everything unsent counts, taken from the inbox or not: while Redis does not
            # answer, the inbox is still emptied every turn.
            if not channel.dead and len(inbox) + len(channel.pending) > self.max_queue:
                self._overflow(channel)
            while inbox:
                item = inbox.popleft()
                if isinstance(item, Chunk):
                    if channel.dead:
                        continue
                    channel.seq += 1
                    pair = (channel.seq, item)
                    channel.chunks.append(pair)
                    channel.pending.append(pair)
                else:
                    channel.ended = "completed" if item == "completed" else "interrupted"
                    channel.end_seq = channel.seq + 1
            if channel.dead and channel.ended:  # nothing more to send, Redis or not
                self._open.pop(id(channel), None)

    def _unsent(self) -> bool:
        """Whether something published was not sent yet (a reply still streaming with
        everything sent does not count: closing need not wait for its end)."""
        return bool(self._new or self._doomed) or any(
            channel.inbox
            or channel.pending
            or not channel.begun
            or channel.confirmed == -2
            or (channel.ended is not None and channel.confirmed < channel.end_seq)
            for channel in self._open.values()
            if not channel.dead
        )

    def _failed(self, error: BaseException) -> None:
        self._pause = min(self.reconnect_max, max(0.05, self._pause * 2))
        self._down_until = time.monotonic() + self._pause
        if self.connected:
            _log.warning(
                "fan-out: Redis unreachable (%s); watchers read the store meanwhile", error
            )
        self.connected = False
        for channel in self._open.values():
            channel.unsure = True

    def _check(self, channels: list[_Channel]) -> None:
        """After a failure: what each reply's stream still holds decides what to send."""
        pipe = self._writer.pipeline(transaction=False)
        for channel in channels:
            pipe.xrevrange(channel.key, "+", "-", count=1)
        tops = pipe.execute()
        for channel, top in zip(channels, tops, strict=True):
            channel.unsure = False
            if not top:
                if channel.confirmed >= 0:
                    channel.confirmed = -2  # lost: a snapshot will make it whole
                continue
            epoch, seq = _parse_id(top[0][0])
            if epoch > channel.epoch:
                channel.dead = True  # a newer owner writes this reply now
            elif epoch == channel.epoch and seq >= max(channel.confirmed, 0):
                channel.confirmed = seq  # everything up to there landed
                channel.begun = True
                channel.pending = [p for p in channel.pending if p[0] > seq]
            elif channel.confirmed >= 0:
                channel.confirmed = -2

    def _flush(self) -> None:
        channels = [c for c in self._open.values() if not c.dead]
        unsure = [c for c in channels if c.unsure]
        if unsure:
            self._check(unsure)
        pipe = self._writer.pipeline(transaction=False)
        plan: list[tuple[_Channel, str, int]] = []
        now = time.monotonic()
        for channel in channels:
            key = channel.key
            if channel.dead:  # fenced by the check above
                continue
            made = channel.confirmed == -2 or not channel.begun
            try:
                head, body, tail = self._payloads(channel)
            except Exception:  # not Redis's: this reply's alone, never the whole pipeline
                _log.exception(
                    "fan-out: reply %r could not be encoded; it is no longer published live "
                    "(its watchers read the store)",
                    channel.reply_id,
                )
                self._give_up(channel)  # its stream is deleted below
                continue
            if channel.confirmed == -2:
                pipe.xadd(key, {"k": "s", "d": head}, id=f"{channel.epoch}-{channel.seq}")
                plan.append((channel, "snapshot", channel.seq))
            elif not channel.begun:
                pipe.xadd(key, {"k": "b", "d": head}, id=f"{channel.epoch}-0")
                plan.append((channel, "begin", 0))
            if body:
                last = channel.pending[-1][0]
                pipe.xadd(
                    key,
                    {"k": "c", "f": channel.pending[0][0], "d": body},
                    id=f"{channel.epoch}-{last}",
                    maxlen=self.maxlen,
                    approximate=True,
                    nomkstream=True,
                )
                plan.append((channel, "chunks", last))
            if tail:
                pipe.xadd(
                    key,
                    {"k": "e", "d": tail},
                    id=f"{channel.epoch}-{channel.end_seq}",
                    nomkstream=True,
                )
                plan.append((channel, "end", channel.end_seq))
            # A write that can make the key (a Begin, a Snapshot after Redis lost it) sets
            # its expiry in the same pipeline: a key never lives without one.
            if channel.ended or now >= channel.expire_at or made:
                pipe.pexpire(key, self.end_ttl_ms if channel.ended else self.live_ttl_ms)
                plan.append((channel, "expire", 0))
                channel.expire_at = now + 30.0
        doomed = list(self._doomed)  # given-up replies' streams: their watchers read the store
        for key in doomed:
            pipe.delete(key)
        if plan or doomed:
            results = pipe.execute(raise_on_error=False)
            self.connected = True
            self._pause = 0.0
            for (channel, what, seq), result in zip(plan, results[: len(plan)], strict=True):
                self._outcome(channel, what, seq, result)
            for result in results[len(plan) :]:
                if isinstance(result, redis.ConnectionError | redis.TimeoutError):
                    raise result
            for _ in doomed:
                self._doomed.popleft()
        # Also when nothing was sent: a reply fenced (the check above), or whose End Redis
        # has, is let go (one given up is let go by ``_drain`` once it ends, Redis or not).
        for channel in list(self._open.values()):
            if (channel.dead and not channel.dropped) or (
                channel.ended and channel.confirmed >= channel.end_seq
            ):
                self._open.pop(id(channel), None)

    @staticmethod
    def _payloads(channel: _Channel) -> tuple[bytes, bytes, bytes]:
        """What ``channel`` sends now, encoded (``b""``: nothing): its Snapshot or Begin,
        its pending chunks, its End. Encoded before any of it goes into the pipeline, so a
        value that cannot be encoded is this reply's failure, not the pipeline's."""
        head = body = tail = b""
        if channel.confirmed == -2:
            head = dumps(
                {
                    "text": channel.text,
                    "thinking": channel.thinking,
                    "chunks": [[s, encode_chunk(c)] for s, c in channel.chunks],
                }
            )
        elif not channel.begun:
            head = dumps({"text": channel.text, "thinking": channel.thinking})
        if channel.confirmed != -2 and channel.pending:
            body = dumps([encode_chunk(c) for _, c in channel.pending])
        if channel.ended and channel.end_seq:
            tail = dumps(channel.ended)
        return head, body, tail

    def _outcome(self, channel: _Channel, what: str, seq: int, result: Any) -> None:
        if what == "expire":
            return
        if isinstance(result, redis.ConnectionError | redis.TimeoutError):
            raise result
        if isinstance(result, Exception):
            # Refused id: already written (a retry) or a newer epoch: look before going on.
            channel.unsure = True
            return
        if result is None:  # NOMKSTREAM: the stream is gone (evicted, expired, restarted)
            channel.confirmed = -2
            return
        if what in ("begin", "snapshot"):
            channel.begun = True
        channel.confirmed = max(channel.confirmed, seq)
        if what in ("chunks", "snapshot"):
            channel.pending = [p for p in channel.pending if p[0] > seq]
        if what == "end" or (channel.ended and channel.confirmed >= channel.end_seq):
            channel.chunks = []

    # -- the watchers' side --------------------------------------------------------------

    def read(
        self,
        reply_id: str,
        after: Position | None,
        *,
        epoch: int,
        wait: float,
        cancelled: threading.Event,
    ) -> list[Entry] | None:
        key = self.key(reply_id)
        try:
            if after is None:
                return self._head(key, epoch)
            return self._tail.read(key, after, wait, cancelled)
        except Exception as error:  # unreachable, or not our entries: the store serves
            _log.debug("fan-out read of %r failed: %s", reply_id, error)
            return None

    async def aread(
        self, reply_id: str, after: Position | None, *, epoch: int, wait: float
    ) -> list[Entry] | None:
        """:meth:`read` for asyncio (``cw.awatch``): waiting for the tail takes no thread."""
        key = self.key(reply_id)
        try:
            if after is None:
                return await asyncio.to_thread(self._head, key, epoch)
            return await self._tail.aread(key, after, wait)
        except Exception as error:  # unreachable, or not our entries: the store serves
            _log.debug("fan-out read of %r failed: %s", reply_id, error)
            return None

    def _head(self, key: str, epoch: int) -> list[Entry] | None:
        rows: Any = self._reader.xrange(key, f"{max(epoch, 1)}-0", "+")
        if not rows:
            return None
        return [_entry_at(i, f)[1] for i, f in rows]

    def drain(self, timeout: float) -> bool:
        """Wait until every reply published so far has ended and was sent (or given up,
        its stream deleted); False if that took longer than ``timeout`` seconds (Redis
        unreachable, say)."""
        deadline = time.monotonic() + timeout
        while self._new or self._open or self._doomed:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.002)
        return True

    def close(self) -> None:
        """Send what is queued (for up to one second), then stop the writer, tail and stop
        listener threads and close the connections (``store.close()`` calls this for the
        last store the fan-out serves). Idempotent, from any thread: a call made while
        another is closing returns once that one is done."""
        if threading.current_thread() is self._thread:
            # The writer itself (a finalizer the collector ran there): never wait for the
            # close that may be waiting for it.
            if not self._close_lock.acquire(blocking=False):
                return
        else:
            self._close_lock.acquire()
        try:
            if self._closed:
                return
            self._close_by = time.monotonic() + 1.0
            self._closing = True
            for listener in list(self.stop_listeners):
                listener.close()
            self._wake.set()
            thread = self._thread
            if thread is not None and threading.current_thread() is not thread:
                thread.join(2.0)
            self._tail.close()
            self._writer.close()
            self._reader.close()
            self._closed = True
        finally:
            self._close_lock.release()
