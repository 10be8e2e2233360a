"""A reply's commit under way as ``store.close()`` begins, refused by a busy database after it.

``close()`` writes the final checkpoints a busy database refused (tests/test_busy_final_write.py).
It took the set of those once, as it began; a reply whose commit was already under way then
(waiting for the store's lock, then for another connection's write lock) and was refused
after that was in nobody's set: the text its user was shown was lost (the row kept its last
periodic write). On main the SQLite test fails either way, as the threads run: the driver's
checkpoint refused after close() took its set, only logged ("could not be written"); or,
close() done first, that checkpoint written on a closed store (the user gets
``StoreClosedError``, not ``StoreBusy``).

The steps are ordered, not raced: the reply's commit queues behind the store's lock, which
a thread of the test holds (another call of the store under way); ``close()`` begins, and
the heartbeat's thread ends (``Heartbeat.serving`` says False: ``close()`` has marked itself
closed and taken its replies); then the store's lock goes and the commit waits
``busy_timeout`` for the other connection's lock, and is refused: ``close()`` keeps its
checkpoint at once, or, if the failure path claimed it first, waits for it (refused too, after
a wait of its own); the user gets ``StoreBusy`` either way. The other connection lets
go at the heartbeat's first log record (``close()`` found the database still busy) —
or never (``held``: then the reply keeps its last periodic write, and a warning names it).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from ending import OnFirstRecord, Waiting, Watched, stream_in_thread

import rxcontext
from rxcontext import Chunk, ContextWindow, ReplyState, StoreBusy
from rxcontext.heartbeat import heartbeat_for

WAIT = 30.0  # bound on every wait for another thread; only a hang reaches it
BUSY = 0.25  # busy_timeout: the commit's wait for the other connection's lock


class _Recording(Waiting):
    """:class:`Waiting`, noting the thread that drives the reply (it commits it too)."""

    thread: threading.Thread | None = None

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        self.thread = threading.current_thread()
        yield from super().iter_chunks(request)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("lock", ["goes", "held"])
def test_a_commit_refused_after_close_began_is_written_by_close(tmp_path: Any, lock: str) -> None:
    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=BUSY, lease_ttl=600.0)
    heartbeat = heartbeat_for(store)
    heartbeat.poll_every = 600.0  # its thread makes no call of its own meanwhile
    watched = Watched(store._lock)
    store._lock = watched  # before any call: every call takes it
    ended = threading.Event()
    heartbeat.serving.append(lambda on: None if on else ended.set())
    shown = threading.Semaphore(0)
    go = threading.Event()
    errors: list[BaseException] = []
    other = sqlite3.connect(db, timeout=WAIT, check_same_thread=False, isolation_level=None)
    released = threading.Event()

    def release() -> None:
        if lock == "goes" and not released.is_set():
            released.set()
            other.execute("COMMIT")

    handler = OnFirstRecord(release)
    logger = logging.getLogger("rxcontext.heartbeat")
    level = logger.level
    holding = threading.Event()
    let_go = threading.Event()

    def hold_the_store() -> None:
        with store._read():  # another call of the store under way
            holding.set()
            assert let_go.wait(WAIT)

    model = _Recording(shown, go, WAIT)
    holder = threading.Thread(target=hold_the_store, daemon=True)
    closing = threading.Thread(target=store.close, daemon=True)
    try:
        cw = ContextWindow(store, model, "c", retry=None)
        cw.add_prompt("go")
        stream = stream_in_thread(cw, "r", errors)
        assert shown.acquire(timeout=WAIT)
        other.execute("BEGIN IMMEDIATE")  # another process's write (a backup, a long write)
        holder.start()
        assert holding.wait(WAIT)
        watched.thread = model.thread
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        go.set()  # the reply ends: its commit begins, and queues behind the store's lock
        assert watched.queued.wait(WAIT), "the reply's commit never asked for the store's lock"
        closing.start()
        assert ended.wait(WAIT), "close() never ended the heartbeat's thread"
        let_go.set()  # the commit gets the store's lock, waits BUSY, and is refused
        stream.join(WAIT)
        assert not stream.is_alive()
        closing.join(WAIT)
        assert not closing.is_alive(), "store.close() hung"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        go.set()
        let_go.set()
        holder.join(WAIT)
        other.close()
        store.close()
    assert len(errors) == 1 and isinstance(errors[0], StoreBusy), errors
    given_up = [r.getMessage() for r in handler.records if "could not be written" in r.getMessage()]
    with rxcontext.open(db) as again:
        found = again.find_reply("r")
    assert found is not None
    if lock == "goes":
        # Everything the user was shown is stored, and nothing was given up.
        assert given_up == [], given_up
        assert (found.state, found.text) == (ReplyState.INTERRUPTED, "hello"), found
    else:
        # Given up once close() had tried for as long as the store waits: said once, not
        # silent, and the row holds its last periodic write (its lease decides from here).
        assert len(given_up) == 1 and "'r'" in given_up[0], given_up
        assert found.text in ("", "hello"), found.text


def test_a_commit_refused_by_a_busy_pool_after_close_began_is_written_by_close(
    pg_url: str,
) -> None:
    """The same on PostgreSQL: the reply's commit waits for a pooled connection (every one
    held by another call of the store) as ``close()`` begins, and is refused (``PoolBusy``,
    then the checkpoint of that failure too). The connection is let go at the heartbeat's
    first log record: ``close()``, which waited for that write, writes the checkpoint. (The
    order of the commit's refusal and ``close()``'s start is not held here as above: the
    SQLite test is the one that fails without the fix whatever the timing.)"""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from ending import start_replies

    store = rxcontext.open(pg_url, retry_budget=0, pool_size=1, lease_ttl=600.0)
    heartbeat = heartbeat_for(store)
    heartbeat.poll_every = 600.0  # its thread takes no connection of its own meanwhile
    ended = threading.Event()
    heartbeat.serving.append(lambda on: None if on else ended.set())
    go = threading.Event()
    gate = threading.Event()  # lets the other call give its connection back
    held = threading.Event()
    asked = threading.Event()  # the reply's commit asked the pool for a connection
    errors: list[BaseException] = []
    streams: list[threading.Thread] = []

    def hung(conn: Any, _: bool) -> None:
        held.set()
        assert gate.wait(WAIT)

    def asking(record: logging.LogRecord) -> bool:
        mine = bool(streams) and threading.current_thread() is streams[0]
        if mine and str(record.msg).startswith("connection requested"):
            asked.set()
        return True

    handler = OnFirstRecord(gate.set)
    logger = logging.getLogger("rxcontext.heartbeat")
    pool_logger = logging.getLogger("psycopg.pool")
    levels = logger.level, pool_logger.level
    holder = threading.Thread(target=lambda: store._runner.run(hung), daemon=True)
    closing = threading.Thread(target=store.close, daemon=True)
    try:
        streams[:] = start_replies(store, 1, go, errors, WAIT)
        holder.start()
        assert held.wait(WAIT)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        pool_logger.setLevel(logging.INFO)
        pool_logger.addFilter(asking)
        go.set()  # the reply ends: its commit waits for the pool
        assert asked.wait(WAIT), "the reply's commit never asked the pool for a connection"
        closing.start()
        assert ended.wait(WAIT), "close() never ended the heartbeat's thread"
        streams[0].join(WAIT)
        assert not streams[0].is_alive()
        closing.join(WAIT)
        assert not closing.is_alive(), "store.close() hung"
    finally:
        pool_logger.removeFilter(asking)
        logger.removeHandler(handler)
        logger.setLevel(levels[0])
        pool_logger.setLevel(levels[1])
        go.set()
        gate.set()
        holder.join(WAIT)
        store.close()
    assert [type(e) for e in errors] == [rxcontext.PoolBusy], errors
    given_up = [r.getMessage() for r in handler.records if "could not be written" in r.getMessage()]
    assert given_up == [], given_up
    with rxcontext.open(pg_url) as again:
        found = again.find_reply("r0")
    assert found is not None
    assert (found.state, found.text) == (ReplyState.INTERRUPTED, "hello"), found
