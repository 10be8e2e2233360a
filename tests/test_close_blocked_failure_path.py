"""``store.close()`` where the failure path of a refused commit cannot run until it returns.

A reply's last commit refused by a busy database (another connection's write lock, after
``busy_timeout``) is not the end of its final write: its failure path writes the checkpoint
(what was delivered, interrupted), on the driver's thread, after the on_error hooks. When
``store.close()`` runs on that thread (in an on_error hook) or blocks it (a sync close on the
event loop of an asyncio reply), close() waited for that checkpoint, which could only come
once it returned: it waited three times ``busy_timeout``, then the store closed and the
checkpoint failed (``StoreClosedError``): the text the user was shown was lost. Now close()
keeps that checkpoint itself at the refusal and writes it.

And a second ``store.close()`` while the first one writes such a checkpoint closes the
connections under it: neither raises (``StoreClosedError`` came out of the first one, the
text lost and nothing said, its holds kept); the text is stored, or a warning names the
reply. A second close() from an on_error hook on the heartbeat's thread (a reply ended by
``cw.stop()``) while another thread's close() waits for that thread returns, and so does
the other one. And a close() that runs as a refused commit's driver has just let go of the
reply (``finished`` reset) writes its checkpoint.

The other connection lets go at the heartbeat's first log record (close() found the
database busy and tries again): whoever writes the checkpoint then, the row must hold the
text. No sleeps: the order comes from the driver's own hooks and the store's statements.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from ending import Watched

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StoreBusy
from rxcontext.heartbeat import heartbeat_for
from rxcontext.operators import Middleware
from rxcontext.persist import ReplyPersister
from rxcontext.providers import ScriptedModel

WAIT = 30.0  # bound on every wait for another thread; only a hang reaches it
BUSY = 0.2  # busy_timeout: the commit's wait for the other connection's lock


class _Release(logging.Handler):
    """At the heartbeat's first record (close() found the database busy), the other
    connection lets go; every record is kept."""

    def __init__(self, other: sqlite3.Connection) -> None:
        super().__init__(logging.INFO)
        self.other = other
        self.records: list[logging.LogRecord] = []
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.first.set()
        if self.other.in_transaction:
            self.other.execute("ROLLBACK")

    def given_up(self) -> list[str]:
        return [r.getMessage() for r in self.records if "could not be written" in r.getMessage()]


@pytest.fixture
def setup(tmp_path: Any) -> Any:
    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=BUSY, lease_ttl=600.0)
    heartbeat_for(store).poll_every = 600.0  # its thread makes no call of its own meanwhile
    other = sqlite3.connect(db, timeout=WAIT, check_same_thread=False, isolation_level=None)
    handler = _Release(other)
    logger = logging.getLogger("rxcontext.heartbeat")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield db, store, other, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        store.close()


def _window(store: Any) -> ContextWindow:
    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "hello"), Chunk(ChunkKind.DONE, finish_reason="stop")]]
    )
    cw = ContextWindow(store, model, "c", retry=None, checkpoint_every=None)
    cw.add_prompt("go")
    return cw


def _stored(db: str) -> tuple[ReplyState, str]:
    with rxcontext.open(db) as again:
        found = again.find_reply("r")
    assert found is not None
    return found.state, found.text


def _refused_and_kept(errors: list[BaseException], handler: Any, db: Any) -> None:
    """The reply's error was the commit's refusal, no warning said its text was given up,
    and close() wrote the refused commit's checkpoint: interrupted, holding "hello"."""
    assert [type(e) for e in errors] == [StoreBusy], errors
    assert handler.given_up() == []
    assert _stored(db) == (ReplyState.INTERRUPTED, "hello")


def test_close_in_an_on_error_hook_writes_the_refused_commits_checkpoint(setup: Any) -> None:
    db, store, other, handler = setup
    closed: list[str] = []

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "hello":
            other.execute("BEGIN IMMEDIATE")  # another process's write: the commit is refused

    def on_error(error: BaseException) -> None:
        store.close()  # "the database is unusable: shut down"
        closed.append(type(error).__name__)

    errors: list[BaseException] = []
    _window(store).stream(Middleware(on_chunk=on_chunk, on_error=on_error), reply_id="r").subscribe(
        lambda c: None, errors.append
    )
    assert closed == ["StoreBusy"], closed
    # The refusal, noting that close() kept the checkpoint (before: StoreClosedError, the
    # failure path's checkpoint written on a closed store).
    _refused_and_kept(errors, handler, db)


def test_a_sync_close_on_the_event_loop_writes_the_refused_commits_checkpoint(
    setup: Any,
) -> None:
    db, store, other, handler = setup
    committing = threading.Event()

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE") and threading.current_thread() is not loop_thread:
            committing.set()  # the reply's commit, in the executor, waits for the lock

    loop_thread = threading.current_thread()
    cw = _window(store)
    errors: list[BaseException] = []

    async def reply() -> None:
        try:
            async for chunk in cw.astream(reply_id="r"):
                if chunk.text == "hello":
                    other.execute("BEGIN IMMEDIATE")
                    store._db().set_trace_callback(trace)
        except Exception as error:
            errors.append(error)

    async def closer() -> None:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, committing.wait, WAIT)
        store.close()  # sync, on the loop: an app's shutdown path

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(reply(), closer()), WAIT)

    asyncio.run(main())
    _refused_and_kept(errors, handler, db)


def test_a_second_close_meanwhile_raises_nothing_and_loses_nothing_silently(
    setup: Any,
) -> None:
    db, store, other, handler = setup
    committing = threading.Event()
    outcomes: dict[str, str] = {}

    def close(name: str) -> None:
        try:
            store.close()
            outcomes[name] = "ok"
        except BaseException as error:  # the outcome is the test's
            outcomes[name] = type(error).__name__

    first = threading.Thread(target=close, args=("first",), daemon=True)
    second = threading.Thread(target=close, args=("second",), daemon=True)
    driver = threading.current_thread()

    def trace(sql: str) -> None:
        mine = sql.startswith("BEGIN IMMEDIATE") and threading.current_thread() is driver
        if mine and not committing.is_set():
            committing.set()
            first.start()  # close() begins while the commit waits for the lock

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "hello":
            other.execute("BEGIN IMMEDIATE")
            store._db().set_trace_callback(trace)

    def on_error(error: BaseException) -> None:
        # The commit was refused; the first close() kept its checkpoint and is writing it
        # (its first log record): a second one, as another thread's shutdown path, while
        # this driver's thread waits for it. (Before the first close() kept it, the second
        # would close the store under the failure path's own write: StoreClosedError to
        # the subscriber, as for any reply whose store is closed under it.)
        assert handler.first.wait(WAIT), "the first close() never began writing"
        second.start()
        second.join(WAIT)
        assert not second.is_alive(), "the second store.close() hung"

    errors: list[BaseException] = []
    _window(store).stream(Middleware(on_chunk=on_chunk, on_error=on_error), reply_id="r").subscribe(
        lambda c: None, errors.append
    )
    first.join(WAIT)
    assert not first.is_alive(), "the first store.close() hung"
    assert outcomes == {"first": "ok", "second": "ok"}, outcomes
    assert [type(e) for e in errors] == [StoreBusy], errors
    # Whichever close() won: the text is stored, or a warning says which reply lost it.
    stored = _stored(db) == (ReplyState.INTERRUPTED, "hello")
    told = any("'r'" in message for message in handler.given_up())
    assert stored or told, (_stored(db), handler.given_up())


def test_a_checkpoint_still_being_written_when_the_wait_runs_out_is_left_to_its_writer(
    setup: Any,
) -> None:
    """close() waits for a final write under way for three times the store's wait at most.
    A failure path's checkpoint still queued then (behind another call of the store) is its
    writer's to end: close() took it as pending, could not take its write, gave it up (a
    warning that it could not be written) and let go of its hold while it could still be
    written."""
    db, store, other, handler = setup
    watched = Watched(store._lock)
    store._lock = watched
    let_go = threading.Event()
    holding = threading.Event()
    store.on_close(let_go.set)  # after the heartbeat's: once its close() has returned

    def hold_the_store() -> None:
        with store._read():  # another call of the store under way
            holding.set()
            assert let_go.wait(WAIT)

    holder = threading.Thread(target=hold_the_store, daemon=True)
    closing = threading.Thread(target=store.close, daemon=True)

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "hello":
            other.execute("BEGIN IMMEDIATE")  # the commit is refused

    def on_error(error: BaseException) -> None:
        other.execute("ROLLBACK")  # the checkpoint that follows could be written...
        holder.start()  # ...but queues behind another call of the store
        assert holding.wait(WAIT)
        watched.thread = threading.current_thread()  # close() begins once it queued

    watched.then = closing.start

    ended = threading.Event()
    heartbeat_for(store).serving.append(lambda on: None if on else ended.set())
    errors: list[BaseException] = []

    def stream() -> None:
        _window(store).stream(
            Middleware(on_chunk=on_chunk, on_error=on_error), reply_id="r"
        ).subscribe(lambda c: None, errors.append)

    driver = threading.Thread(target=stream, daemon=True)
    try:
        driver.start()
        driver.join(WAIT)
        assert not driver.is_alive()
        closing.join(WAIT)
        assert not closing.is_alive(), "store.close() hung"
    finally:
        let_go.set()
        holder.join(WAIT)
    assert watched.queued.is_set()
    # Written, or failed as the store closed under it (said to the user): never given up
    # by close() while it was under way.
    assert handler.given_up() == [], handler.given_up()
    assert len(errors) == 1, errors
    if _stored(db)[1] != "hello":
        assert isinstance(errors[0], rxcontext.StoreClosedError), errors


class _Paused(ScriptedModel):
    """Streams "hello", then waits (for ``go``) before the rest: a reply under way."""

    def __init__(self) -> None:
        self.head = [Chunk(ChunkKind.TEXT, "hello")]
        self.tail = [Chunk(ChunkKind.TEXT, " world"), Chunk(ChunkKind.DONE, finish_reason="stop")]
        super().__init__([[*self.head, *self.tail]])
        self.paused = threading.Event()
        self.go = threading.Event()

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        yield from self.head
        self.paused.set()
        self.go.wait(WAIT)
        yield from self.tail


def test_a_close_from_a_hook_on_the_heartbeats_thread_while_another_close_waits_for_it(
    tmp_path: Any,
) -> None:
    """``cw.stop()`` ends a sync reply on the heartbeat's thread, which runs the on_error
    hooks; one closes the store ("shut down on error") while another thread's close() waits
    for that thread to end. Both return (a close() that waited for the other's close hooks
    deadlocked here: each waited for the other, for ever)."""
    store = rxcontext.open(str(tmp_path / "db.sqlite"), lease_ttl=600.0)
    began = threading.Event()
    store.on_close(began.set)  # before the heartbeat's own hook, which joins its thread
    heartbeat_for(store)
    model = _Paused()
    cw = ContextWindow(store, model, "c", retry=None, checkpoint_every=None)
    cw.add_prompt("go")
    outcomes: dict[str, str] = {}

    def close(name: str) -> None:
        try:
            store.close()
            outcomes[name] = "ok"
        except BaseException as error:  # the outcome is the test's
            outcomes[name] = type(error).__name__

    other = threading.Thread(target=close, args=("other",), daemon=True)
    hooked: list[str] = []
    returned = threading.Event()

    def on_error(error: BaseException) -> None:
        hooked.append(threading.current_thread().name)
        try:
            other.start()  # another thread's shutdown path...
            assert began.wait(WAIT)  # ...is in store.close()
            close("hook")
        finally:
            returned.set()

    errors: list[BaseException] = []

    def stream() -> None:
        cw.stream(Middleware(on_error=on_error), reply_id="r").subscribe(
            lambda c: None, errors.append
        )

    driver = threading.Thread(target=stream, daemon=True)
    try:
        driver.start()
        assert model.paused.wait(WAIT)
        cw.stop("r")
        assert returned.wait(WAIT), "the hook's store.close() hung"
        other.join(WAIT)
        assert not other.is_alive(), "the other thread's store.close() hung"
    finally:
        model.go.set()
        driver.join(WAIT)
    assert hooked == ["rxcontext-heartbeat"], hooked
    assert outcomes == {"other": "ok", "hook": "ok"}, outcomes


def test_a_close_as_the_refused_commits_driver_lets_go_of_the_reply_keeps_its_checkpoint(
    setup: Any,
) -> None:
    """close() runs on another thread at the first line the driver of a refused commit runs
    with the reply let go of (``finished`` reset) and ``_claim`` free (a line trace pauses
    the driver there). The refusal was set only after that lock was released: close() saw
    neither a refusal to keep nor a write under way, returned, and closed the connection
    under the failure path's checkpoint (StoreClosedError, the row kept '')."""
    db, store, other, handler = setup
    closing = threading.Thread(target=store.close, daemon=True)
    complete = ReplyPersister._complete.__code__

    def at_line(frame: FrameType, event: str, arg: Any) -> Any:
        persister = frame.f_locals.get("self")
        if (
            event == "line"
            and closing.ident is None
            and "failed" in frame.f_locals  # the commit failed
            and not persister.finished
            and not persister._claim.locked()
        ):
            other.execute("ROLLBACK")  # the checkpoint can be written now
            closing.start()
            closing.join(WAIT)
        return at_line

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        return at_line if event == "call" and frame.f_code is complete else None

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "hello":
            other.execute("BEGIN IMMEDIATE")  # the commit is refused

    errors: list[BaseException] = []
    before = sys.gettrace()
    sys.settrace(trace)
    try:
        _window(store).stream(Middleware(on_chunk=on_chunk), reply_id="r").subscribe(
            lambda c: None, errors.append
        )
    finally:
        sys.settrace(before)
    assert closing.ident is not None, "the driver never reached that line"
    assert not closing.is_alive(), "store.close() hung"
    _refused_and_kept(errors, handler, db)


def test_a_store_closed_under_a_live_reply_says_which_reply_was_not_stored(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A store closed while a reply streams (here by the app's own hook): the reply's error
    stays the store's StoreClosedError, and it, and a warning, name the reply whose
    delivered text could not be stored (before: only "store … is closed; open it again")."""
    store = rxcontext.open(tmp_path / "gone.db")
    script = [
        Chunk(ChunkKind.TEXT, "hello"),
        Chunk(ChunkKind.TEXT, " world"),
        Chunk(ChunkKind.DONE, finish_reason="stop"),
    ]
    cw = ContextWindow(store, ScriptedModel([script]), "c", retry=None)
    cw.add_prompt("hi")

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "hello":
            store.close()

    errors: list[BaseException] = []
    with caplog.at_level(logging.WARNING, logger="rxcontext"):
        cw.stream(Middleware(on_chunk=on_chunk), reply_id="gone-r").subscribe(
            lambda c: None, errors.append
        )
    assert [type(e).__name__ for e in errors] == ["StoreClosedError"], errors
    notes = getattr(errors[0], "__notes__", [])
    assert any("'gone-r'" in n and "not stored" in n for n in notes), notes
    assert any("'gone-r'" in r.getMessage() for r in caplog.records), caplog.records
