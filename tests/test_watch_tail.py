"""The live tails of a process's watches are read by one thread on one Redis connection
(rxcontext/fanout/redis_tail.py), not by a blocking ``XREAD`` per watch.

With a thread and a connection per watch, a process watching 200 replies of the scale-out
benchmark (benchmarks/scaleout.py) got its chunks 0.2 s late at p50 and 1.6 s at p99, its
threads queued behind each other for the GIL; with one reader, 0.06–0.09 s and 0.4 s
(docs/benchmarks.md, "Scale-out")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from typing import Any

import pytest
import redistest
from gated import words
from watching import WAIT, AsyncWatcher, Owner, Watcher, published, stored_text, until

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext.fanout import fanout_for
from rxcontext.fanout.watcher import Look, Read, read_store, watch_core
from rxcontext.providers import ScriptedModel
from rxcontext.store.base import CheckpointDraft, RecordDraft, ReplyTicket

redis = pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout  # noqa: E402

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
N = 12
WORDS = [f"w{i} " for i in range(N)]


def _top(client: object, key: str) -> int:
    """The seq of the stream's newest entry."""
    top = client.xrevrange(key, "+", "-", count=1)  # type: ignore[attr-defined]
    return int(top[0][0].split(b"-")[1]) if top else -1


def _window(store: rxcontext.Store, context: str) -> ContextWindow:
    script = [*(T(w) for w in WORDS), Chunk(ChunkKind.DONE, finish_reason="stop")]
    cw = ContextWindow(
        store, ScriptedModel([script]), context=context, retry=None, checkpoint_every=None
    )
    cw.add_prompt("Count.")
    return cw


def _owners(
    store: rxcontext.Store, n: int
) -> tuple[list[ContextWindow], list[threading.Semaphore], list[Owner]]:
    """``n`` replies ``r0``, ``r1``, … (a context each), each held after its third chunk by
    its gate."""
    windows = [_window(store, f"c{i}") for i in range(n)]
    gates = [threading.Semaphore(0) for _ in windows]
    owners = [
        Owner(cw, f"r{i}", gate=g).start()
        for i, (cw, g) in enumerate(zip(windows, gates, strict=True))
    ]
    for gate in gates:
        gate.release(3)
    fanout = fanout_for(store)
    for i in range(n):  # a watch that came sooner would begin from the store
        assert published(fanout, f"r{i}", 3)
    return windows, gates, owners


def test_many_live_watches_block_on_one_connection(private: redistest.PrivateRedis) -> None:
    fanout = RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=fanout)
    client = private.client()
    try:
        windows, gates, owners = _owners(store, 24)
        watchers = [Watcher(cw, f"r{i}", poll=5.0).start() for i, cw in enumerate(windows)]
        for watcher in watchers:
            assert watcher.wait_for(words(3)), watcher.text
        # Every watch is live and waiting for its reply's fourth chunk: one blocking read
        # between them (none while the reader is between two reads).
        assert int(client.info("clients")["blocked_clients"]) <= 1
        for gate in gates:
            gate.release(4)
        for watcher in watchers:
            assert watcher.wait_for(words(7)), watcher.text  # live: no checkpoints are written
        for owner in owners:
            owner.join()
        for i, (cw, watcher) in enumerate(zip(windows, watchers, strict=True)):
            watcher.join()
            assert watcher.completed and watcher.error is None
            assert watcher.text == stored_text(cw, f"r{i}") == words(N)
    finally:
        client.close()
        store.close()
        fanout.close()


def test_a_watch_behind_the_shared_buffer_reads_what_it_missed(
    private: redistest.PrivateRedis,
) -> None:
    """The reader keeps a few entries per stream; a watch that falls further behind (its
    subscriber slow) reads the rest itself and misses nothing."""
    fanout = RedisFanout(private.url, flush_every=0.001)
    fanout._tail._keep = 2  # the shared buffer holds two entries per stream
    store = rxcontext.open(":memory:", fanout=fanout)
    try:
        cw = _window(store, "slow")
        gate = threading.Semaphore(0)
        owner = Owner(cw, "r", gate=gate).start()
        gate.release(1)
        assert published(fanout, "r", 1)  # else the watch would poll the store (5 s) at first
        slow = threading.Event()
        watcher = Watcher(cw, "r", poll=5.0)

        def stuck_on_w1(chunk: Chunk) -> None:
            if chunk.text == WORDS[1]:
                assert slow.wait(WAIT)

        watcher.on_chunk = stuck_on_w1
        watcher.start()
        # The watcher is stuck in its subscriber on w1 while the rest is published one
        # chunk per flush (entries each), more than the shared buffer keeps.
        gate.release(1)
        assert watcher.wait_for(words(2)), watcher.text
        client = private.client()
        for seq in range(3, 9):
            gate.release(1)
            assert until(lambda seq=seq: _top(client, fanout.key("r")) == seq)  # an entry each
        client.close()
        slow.set()
        owner.join()
        watcher.join()
        assert watcher.completed
        assert watcher.chunks == owner.delivered  # nothing lost, nothing twice
        assert watcher.text == stored_text(cw, "r") == words(N)
    finally:
        store.close()
        fanout.close()


def test_awatch_over_redis_takes_no_thread_per_watch(private: redistest.PrivateRedis) -> None:
    """``cw.awatch`` runs the watcher on the event loop: a live watch waits on a future the
    tail thread resolves, not on a thread of its own (the benchmark's watcher process ran
    200 of those threads)."""
    fanout = RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=fanout)
    try:
        windows, gates, owners = _owners(store, 16)
        watching: list[str] = []

        async def watch(i: int, cw: ContextWindow, live: asyncio.Event) -> str:
            text = ""
            async for chunk in cw.awatch(f"r{i}", poll=5.0):
                text += chunk.text
                if text == words(3):
                    live.set()
            return text

        async def main() -> list[str]:
            lives = [asyncio.Event() for _ in windows]
            tasks = [
                asyncio.create_task(watch(i, cw, live))
                for i, (cw, live) in enumerate(zip(windows, lives, strict=True))
            ]
            for live in lives:
                await asyncio.wait_for(live.wait(), WAIT)
            watching.extend(t.name for t in threading.enumerate())
            for gate in gates:
                gate.release(10_000)
            return list(await asyncio.gather(*tasks))

        texts = asyncio.run(main())
        assert not [name for name in watching if name.startswith("rxcontext-watch")]
        for owner in owners:
            owner.join()
        for i, (cw, text) in enumerate(zip(windows, texts, strict=True)):
            assert text == stored_text(cw, f"r{i}") == words(N)
    finally:
        store.close()
        fanout.close()


def test_the_shared_buffer_keeps_nothing_its_watch_has_read(
    private: redistest.PrivateRedis,
) -> None:
    """What a watch has read is dropped from the tail's buffer at its next read: entries of
    ended replies kept until their stream goes idle were garbage the collector walked (at
    200 streams, 0.1-0.2 s full collections in the benchmark's watcher process)."""
    fanout = RedisFanout(private.url, flush_every=0.001)
    store = rxcontext.open(":memory:", fanout=fanout)
    try:
        cw = _window(store, "kept")
        gate = threading.Semaphore(0)
        owner = Owner(cw, "r", gate=gate).start()
        gate.release(1)
        assert published(fanout, "r", 1)  # else the watch would poll the store (5 s) at first
        watcher = Watcher(cw, "r", poll=5.0).start()
        assert watcher.wait_for(words(1)), watcher.text
        client = private.client()
        for seq in range(2, N + 1):  # an entry per chunk, each read by the watch as it comes
            gate.release(1)
            assert until(lambda seq=seq: _top(client, fanout.key("r")) == seq)
            assert watcher.wait_for(words(seq)), watcher.text
        client.close()
        owner.join()
        watcher.join()
        assert watcher.text == stored_text(cw, "r") == words(N)
        kept = fanout._tail._streams[fanout.key("r")].entries
        # At most what its last read got (the DONE and the End): no chunk of the text.
        assert all(at > (1, N) for at, _ in kept), kept
    finally:
        store.close()
        fanout.close()


def test_an_async_wait_that_times_out_or_is_cancelled_leaves_no_waiter(
    private: redistest.PrivateRedis,
) -> None:
    """A live ``aread`` waits on a future and a timer; when the timer ends the wait, or its
    task is cancelled, the future is taken off the stream's waiters (the tail would
    otherwise resolve, and keep, futures nobody awaits)."""
    fanout = RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=fanout)
    try:
        (cw,), (gate,), (owner,) = _owners(store, 1)
        watcher = Watcher(cw, "r0", poll=5.0).start()
        assert watcher.wait_for(words(3)), watcher.text
        tail = fanout._tail
        key = fanout.key("r0")
        client = private.client()
        top = _top(client, key)  # the newest entry: nothing new comes while the gate is shut
        client.close()
        # The watch may have read the log's head by itself (XRANGE): wait until it waits on
        # the tail, whose buffer of the stream then exists.
        assert until(lambda: key in tail._streams and tail._streams[key].cursor[1] >= top)
        stream = tail._streams[key]

        async def main() -> None:
            after = (stream.cursor[0], top)
            assert await tail.aread(key, after, 0.05) == []
            assert stream.waiters == []
            waiting = asyncio.create_task(tail.aread(key, after, WAIT))
            for _ in range(1000):  # the task runs up to its wait within a few loop turns
                if stream.waiters:
                    break
                await asyncio.sleep(0)
            assert [f for _, f in stream.waiters if not f.done()], "the read did not wait"
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert stream.waiters == []

        asyncio.run(main())
        gate.release(10_000)
        owner.join()
        watcher.join()
        assert watcher.text == stored_text(cw, "r0") == words(N)
    finally:
        store.close()
        fanout.close()


def _begun(store: rxcontext.Store, context: str, reply_id: str) -> tuple[str, ReplyTicket]:
    """A reply begun by another worker (``worker-a``, which never renews its lease: open the
    store with a long one), its checkpoint "Hello ", and no live log yet."""
    ctx = store.get_or_create_context(context).id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "Go."))
    row = store.begin_reply(ctx, reply_id, owner="worker-a")
    ticket = ReplyTicket(row.id, row.epoch)
    store.save_checkpoint(ticket, CheckpointDraft(append_text="Hello ", chunks=1))
    return ctx, ticket


@pytest.mark.parametrize("watching", [Watcher, AsyncWatcher], ids=["watch", "awatch"])
def test_a_watch_begun_before_the_live_log_goes_live_when_it_appears(
    private: redistest.PrivateRedis, watching: type[Watcher]
) -> None:
    """A watch that starts before the owner's first send reached Redis (its writer sends
    every ``flush_every``; a browser that reconnects as a reply begins) shows the store's
    checkpoint, then waits on the live channel: the log's first entries wake it. It used to
    pause for ``poll`` seconds (``checkpoint_every``, 1 s by default) before looking again."""
    fanout = RedisFanout(private.url)
    # worker-a never renews its lease: a long one keeps its reply live however slow the run.
    store = rxcontext.open(":memory:", fanout=fanout, lease_ttl=120.0)
    try:
        ctx, ticket = _begun(store, "early", "r-early")
        cw = ContextWindow(store, ScriptedModel([]), context="early")
        watcher = watching(cw, "r-early", poll=60.0).start()
        assert watcher.wait_for("Hello ")  # from the store: no live log yet

        channel = fanout.open_channel("r-early", ticket.epoch)  # the owner's first send
        channel.chunk(T("Hello "))
        channel.chunk(T("world"))
        assert watcher.wait_for("Hello world", timeout=10.0), watcher.text  # not 60 s

        store.commit_reply(
            ctx, [RecordDraft(RecordType.MODEL_RESP, "Hello world")], reply=ticket, end="reply"
        )
        channel.end("completed")
        watcher.join()
        assert watcher.error is None and watcher.completed
        assert watcher.text == "Hello world" == stored_text(cw, "r-early")
    finally:
        store.close()


def _to_its_wait(store: rxcontext.Store, reply_id: str) -> tuple[list[str], list[Chunk], Read]:
    """The watcher core's steps for a reply with no live log, answered by hand (the store
    read for real, the log's head missing), until it waits on the live channel: what it
    read ("head", "look") in order, the chunks it showed, and that wait."""
    core = watch_core(reply_id, True, poll=60.0, wait=0.2)
    steps: list[str] = []
    shown: list[Chunk] = []
    try:
        step = core.send(None)
        while not (isinstance(step, Read) and step.after is not None):
            if isinstance(step, Chunk):
                shown.append(step)
                answer: object = None
            elif isinstance(step, Look):
                steps.append("look")
                answer = read_store(store, reply_id)
            else:
                assert isinstance(step, Read), step  # no pause: it waits on the channel
                steps.append("head")
                answer = None  # no log from its head yet
            step = core.send(answer)
        return steps, shown, step
    finally:
        core.close()


def test_a_watch_waits_for_the_live_log_in_reads_of_at_most_wait() -> None:
    """While no log is there, the watch waits on the live channel until its next look at the
    store (60 s here) in reads of at most ``wait`` each, so a blocking watch that is
    disposed stops within ``wait`` (a read of the tail thread's buffer sees the
    cancellation only when its wait ends)."""
    store = rxcontext.open(":memory:", lease_ttl=120.0)
    try:
        _begun(store, "waiting", "r-wait")
        _, shown, wait = _to_its_wait(store, "r-wait")
        assert shown == [T("Hello ")]  # the checkpoint, from the store
        assert wait.after == (0, 2**64 - 1)  # from epoch 1's Begin on
        assert 0 < wait.wait <= 0.2
    finally:
        store.close()


def test_a_watch_begun_before_the_live_log_reads_the_head_and_the_store_once() -> None:
    """A watch that finds no live log looks at the store and then waits on the channel: its
    first pass does not read the log's head and the store a second time (a store read is a
    pool checkout, which hundreds of watches starting at once share)."""
    store = rxcontext.open(":memory:", lease_ttl=120.0)
    try:
        _begun(store, "early", "r-early")
        steps, _, wait = _to_its_wait(store, "r-early")
        assert steps == ["head", "look"]
        assert wait.after == (0, 2**64 - 1)  # now waiting for epoch 1's log from its Begin
    finally:
        store.close()


def test_a_stream_no_watch_reads_is_dropped_and_one_read_is_kept(
    private: redistest.PrivateRedis,
) -> None:
    """The tail forgets a stream no watch has read for ``idle`` seconds (it looks for such
    streams at most every ``idle / 4``, not before every read), and keeps reading one a
    watch still reads."""
    from rxcontext.fanout.redis import _entry_at
    from rxcontext.fanout.redis_tail import Tail

    client = redis.Redis.from_url(private.url)
    client.set_response_callback("XREAD", lambda response, **_: response)
    reader = redis.Redis.from_url(private.url)
    tail = Tail(client, reader, _entry_at, block=0.02, idle=0.3)
    left, kept = "t:{left}:s", "t:{kept}:s"
    for key in (left, kept):
        reader.xadd(key, {"k": "b", "d": "{}"}, id="1-0")
    never = threading.Event()
    try:
        for key in (left, kept):
            assert tail.read(key, (1, 0), 0.01, never) == []
        assert left in tail._streams and kept in tail._streams
        seq = 0

        def read_kept() -> bool:
            nonlocal seq
            seq += 1
            reader.xadd(kept, {"k": "c", "f": seq, "d": '[["text","x"]]'}, id=f"1-{seq}")
            got = tail.read(kept, (1, seq - 1), WAIT, never)
            assert got is not None and [(e.epoch, e.first) for e in got] == [(1, seq)]
            return left not in tail._streams

        assert until(read_kept)  # one stream idle past 0.3 s while the other is read
        assert kept in tail._streams
    finally:
        tail.close()
        client.close()
        reader.close()


def _tail_over(
    private: redistest.PrivateRedis, block: float, **options: Any
) -> tuple[Any, Any, Any]:
    """A bare :class:`Tail` on ``private`` (the fan-out's own wiring), its two clients."""
    from rxcontext.fanout.redis import _entry_at
    from rxcontext.fanout.redis_tail import Tail

    client = redis.Redis.from_url(private.url)
    client.set_response_callback("XREAD", lambda response, **_: response)
    reader = redis.Redis.from_url(private.url)
    return Tail(client, reader, _entry_at, block=block, **options), client, reader


def _read_as(side: str, tail: Any, key: str, after: Any, wait: float) -> list[Any] | None:
    """``tail.read`` (``side="read"``, on this thread) or ``tail.aread`` on an event loop."""
    if side == "read":
        return tail.read(key, after, wait, threading.Event())  # type: ignore[no-any-return]
    return asyncio.run(tail.aread(key, after, wait))  # type: ignore[no-any-return]


class _Recording(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, noting the function of every call given to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.calls: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        inner = fn.args[0] if isinstance(fn, functools.partial) and fn.args else fn
        self.calls.append(getattr(inner, "__name__", repr(inner)))
        return super().submit(fn, *args, **kwargs)


def test_an_async_read_of_a_stream_new_to_the_tail_takes_no_executor_thread(
    private: redistest.PrivateRedis,
) -> None:
    """A watch's first read of a stream the tail thread is not reading yet is the tail
    thread's next ``XREAD`` (from the watch's position), not a read of its own in the
    loop's default executor: in the scale-out benchmark every watch began with one, queued
    behind the watches' store reads there, and chunks reached the watcher 0.3-0.5 s late at
    p50 (docs/benchmarks.md)."""
    tail, client, reader = _tail_over(private, block=0.05)
    keys = [f"t:{{new{i}}}:s" for i in range(8)]
    for key in keys:
        reader.xadd(key, {"k": "c", "f": 1, "d": '[["text","x"]]'}, id="1-1")
    executor = _Recording()

    async def main() -> list[list[Any] | None]:
        asyncio.get_running_loop().set_default_executor(executor)
        return list(await asyncio.gather(*(tail.aread(key, (1, 0), WAIT) for key in keys)))

    try:
        got = asyncio.run(main())
        seen = [[(e.epoch, e.first) for e in entries or ()] for entries in got]
        assert seen == [[(1, 1)]] * len(keys)
        # What may go to the executor: a nudge of the tail thread's blocking read.
        assert set(executor.calls) <= {"_interrupt"}, executor.calls
    finally:
        executor.shutdown()
        tail.close()
        client.close()
        reader.close()


@pytest.mark.parametrize("side", ["read", "aread"])
def test_a_new_stream_is_read_at_once_while_the_tail_blocks_on_others(
    private: redistest.PrivateRedis, side: str
) -> None:
    """The tail thread blocks on the streams it reads (``block``, 60 s here); a watch that
    waits on a stream it does not read yet interrupts that wait (``CLIENT UNBLOCK``) when
    the thread did not take the stream up by itself within a few milliseconds, so the
    watch gets the stream's next entry long before its own wait (10 s) ends."""
    tail, client, reader = _tail_over(private, block=60.0)
    idle, new = "t:{idle}:s", "t:{new}:s"
    reader.xadd(idle, {"k": "b", "d": "{}"}, id="1-0")
    reader.xadd(new, {"k": "b", "d": "{}"}, id="1-0")
    never = threading.Event()
    admin = private.client()

    def add_once_waited_on() -> None:
        assert until(lambda: new in tail._streams)
        reader.xadd(new, {"k": "c", "f": 1, "d": '[["text","x"]]'}, id="1-1")

    adder = threading.Thread(target=add_once_waited_on)
    try:
        assert tail.read(idle, (1, 0), 0.01, never) == []  # the tail now blocks on `idle`
        assert until(lambda: int(admin.info("clients")["blocked_clients"]) == 1)
        adder.start()
        got = _read_as(side, tail, new, (1, 0), 10.0)
        assert got is not None and [(e.epoch, e.first) for e in got] == [(1, 1)]
    finally:
        adder.join()
        admin.close()
        tail.close()
        client.close()
        reader.close()


@pytest.mark.parametrize("side", ["read", "aread"])
def test_an_entry_the_tail_cannot_read_fails_its_own_stream_alone(
    private: redistest.PrivateRedis, side: str
) -> None:
    """An entry the tail thread cannot parse (a chunk kind of a newer writer, or foreign
    data under the key) makes that stream's watches fall back to the store (None), as the
    direct reads do; the thread goes on reading every other stream. It used to raise out of
    the thread, which never started again: every watch of the process then waited its
    whole ``wait`` for nothing."""
    fanout = RedisFanout(private.url)
    reader = private.client()
    never = threading.Event()

    def read(reply_id: str, wait: float) -> list[Any] | None:
        if side == "read":
            return fanout.read(reply_id, (1, 0), epoch=1, wait=wait, cancelled=never)
        return asyncio.run(fanout.aread(reply_id, (1, 0), epoch=1, wait=wait))

    try:
        for reply_id in ("good", "bad"):
            reader.xadd(fanout.key(reply_id), {"k": "b", "d": "{}"}, id="1-0")
            assert read(reply_id, 0.01) == []  # both are the tail thread's now
        bad = {"k": "c", "f": 1, "d": '[["a_kind_from_a_newer_writer","x"]]'}
        reader.xadd(fanout.key("bad"), bad, id="1-1")  # type: ignore[arg-type]
        assert read("bad", WAIT) is None  # the store serves it
        reader.xadd(fanout.key("good"), {"k": "c", "f": 1, "d": '[["text","x"]]'}, id="1-1")
        got = read("good", WAIT)
        assert got is not None and [(e.epoch, e.first) for e in got] == [(1, 1)]
    finally:
        reader.close()
        fanout.close()


@pytest.mark.parametrize("side", ["read", "aread"])
def test_a_stream_a_watch_waits_on_is_not_swept_as_idle(
    private: redistest.PrivateRedis, side: str
) -> None:
    """The tail drops a stream no watch read for ``idle`` seconds; a watch that waits longer
    than that (``wait`` is the caller's) is reading it all the while: its stream must stay
    read, so an entry that comes after ``idle`` reaches it (it used to come only with the
    end of the wait, as ``[]``)."""
    idle, wait = 0.2, 5.0
    tail, client, reader = _tail_over(private, block=0.05, idle=idle)
    key = "t:{swept}:s"
    reader.xadd(key, {"k": "b", "d": "{}"}, id="1-0")
    never = threading.Event()
    started = threading.Event()

    def add_after_idle() -> None:
        started.wait(WAIT)
        past = time.monotonic() + 4 * idle  # several sweeps while the watch waits
        assert until(lambda: time.monotonic() > past)
        reader.xadd(key, {"k": "c", "f": 1, "d": '[["text","x"]]'}, id="1-1")

    adder = threading.Thread(target=add_after_idle)
    adder.start()
    try:
        assert tail.read(key, (1, 0), 0.01, never) == []  # the tail reads it now
        started.set()
        got = _read_as(side, tail, key, (1, 0), wait)
        assert got is not None and [(e.epoch, e.first) for e in got] == [(1, 1)]
    finally:
        adder.join()
        tail.close()
        client.close()
        reader.close()


@pytest.mark.parametrize("side", ["read", "aread"])
def test_a_waiting_watch_the_buffer_no_longer_reaches_reads_what_it_missed(
    private: redistest.PrivateRedis, side: str
) -> None:
    """The tail keeps the last ``keep`` entries of a stream; when one read brings more than
    that while a watch waits further back, the buffer no longer reaches the watch's
    position: the watch must get the entries it missed from Redis, not the buffer's rest
    (with a gap) or, when another watch of the stream took the buffer further, nothing."""
    tail, client, reader = _tail_over(private, block=60.0, keep=2)
    admin = private.client()
    key = "t:{kept}:s"
    reader.xadd(key, {"k": "b", "d": "{}"}, id="1-0")
    for seq in (1, 2):
        reader.xadd(key, {"k": "c", "f": seq, "d": '[["text","x"]]'}, id=f"1-{seq}")

    def add_three_at_once() -> None:  # one transaction: the blocked XREAD gets all three
        assert until(lambda: key in tail._streams and tail._streams[key].included)
        assert until(lambda: int(admin.info("clients")["blocked_clients"]) == 1)
        pipe = reader.pipeline(transaction=True)
        for seq in (3, 4, 5):
            pipe.xadd(key, {"k": "c", "f": seq, "d": '[["text","x"]]'}, id=f"1-{seq}")
        pipe.execute()

    adder = threading.Thread(target=add_three_at_once)
    adder.start()
    try:
        got = _read_as(side, tail, key, (1, 2), WAIT)
        assert got is not None
        assert [(e.epoch, seq) for e in got for seq in range(e.first, e.last + 1)] == [
            (1, 3),
            (1, 4),
            (1, 5),
        ]
    finally:
        adder.join()
        admin.close()
        tail.close()
        client.close()
        reader.close()
