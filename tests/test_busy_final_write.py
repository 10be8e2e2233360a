"""A final write another process's lock refused: the reply stays its process's, across processes.

A worker process (the child) streams a reply; after a few chunks it says ``shown`` and waits
for a line. The parent ("another worker") then holds the database's write lock from a
plain ``sqlite3`` connection (``BEGIN IMMEDIATE``: a long write, a backup) and lets the
child go on. The reply ends under the lock:

* ``ctrl-c``: the parent sends the child SIGINT; the child's final checkpoint (what it
  showed) waits ``busy_timeout`` for the lock and is refused.
* ``completed``: the model ends the reply; its commit, then the checkpoint of that failure,
  are refused.

Both use ``busy_timeout`` = ``lease_ttl`` = 1 s: the defaults' relation (5 s each), shorter,
so that the test does not sit through a 5 s busy wait; what it checks is the same.

Either way the reply's lease has run out by the time the child is told ``StoreBusy``: the
lease is renewed by writes, and nothing can be written under the lock. Still, while the
lock is held and after it goes, the parent must never see the reply interrupted with less
than the child showed: it reads live (``ReplyBusy`` to a resume) until the child's pending
write lands, and what is finally stored holds everything shown. The child gets its
``KeyboardInterrupt`` (the ``StoreBusy`` as its cause), as docs/guarantees.md promises.

Synchronisation is by lines on the child's stdout/stdin; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from typing import IO, Any

import pytest
from ending import OnFirstRecord, Waiting, start_replies, stream_in_thread

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    ReplyBusy,
    ReplyState,
    StoreBusy,
)
from rxcontext.providers import ScriptedModel

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX"),
    pytest.mark.timeout(90),
]

WAIT = 30.0  # the longest a line from the child may take (a 1 s busy wait included)

CHILD = textwrap.dedent(
    """
    import json, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    path, mode = sys.argv[1], sys.argv[2]
    T = lambda s: Chunk(ChunkKind.TEXT, s)

    def say(*words):
        print(*words, flush=True)

    store = rxcontext.open(path, busy_timeout=1.0, lease_ttl=1.0)
    if mode == "ctrl-c":
        model = ScriptedModel(
            [[*(T(f"<{i}>") for i in range(100000)), Chunk(ChunkKind.DONE, finish_reason="stop")]],
            delay=0.01,
        )
    else:
        class Pausing(ScriptedModel):
            def iter_chunks(self, request):
                for i in range(5):
                    yield T(f"<{i}>")
                say("shown")
                sys.stdin.readline()  # the parent holds the lock now
                yield T("<end>")
                yield Chunk(ChunkKind.DONE, finish_reason="stop")

        model = Pausing([])
    cw = ContextWindow(store, model, "c", retry=None)
    cw.add_prompt("go")
    shown = []

    def on_next(chunk):
        if chunk.kind is ChunkKind.TEXT:
            shown.append(chunk.text)
            if mode == "ctrl-c" and len(shown) == 5:
                say("shown")
                sys.stdin.readline()  # the parent holds the lock now; SIGINT follows

    try:
        cw.stream(reply_id="r").subscribe(on_next)
        say("got", "nothing", "-")
    except BaseException as error:
        say("got", type(error).__name__, type(error.__cause__).__name__)
    say("text", json.dumps("".join(shown)))
    sys.stdin.readline()  # the parent let the lock go and looked
    store.close()
    say("closed")
    """
)


class Lines:
    """The child's stdout, line by line, read on a thread: every wait is bounded."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("<eof>")

    def next(self, prefix: str) -> str:
        """The next line, which must start with ``prefix`` (waits at most WAIT)."""
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} line from the child within {WAIT} s") from None
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line


def send(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()


def assert_the_childs(other: Any, cw: ContextWindow) -> None:
    """The reply reads as the child's, live, to every reader of another process."""
    assert cw.checkpoints() == []
    [live] = cw.active_replies()
    assert live.state is ReplyState.STREAMING, live
    found = other.find_reply("r")
    assert found is not None and found.state is ReplyState.STREAMING, found
    assert cw.stats().open_checkpoints == 0


@pytest.mark.parametrize("mode", ["ctrl-c", "completed"])
def test_a_reply_whose_final_write_a_lock_refused_stays_its_processs(
    tmp_path: Any, mode: str
) -> None:
    db = str(tmp_path / "db.sqlite")
    rxcontext.open(db).close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    lines = Lines(child.stdout)
    lock: sqlite3.Connection | None = None
    other = rxcontext.open(db, lease_ttl=30.0)  # the parent's own resume keeps its lease
    try:
        cw = ContextWindow(
            other,
            ScriptedModel([[Chunk(ChunkKind.TEXT, "+more"), Chunk(ChunkKind.DONE)]]),
            "c",
            retry=None,
        )
        lines.next("shown")
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        send(child, "go")
        if mode == "ctrl-c":
            os.kill(child.pid, signal.SIGINT)
        got = lines.next("got").split()
        if mode == "ctrl-c":
            # You always get your KeyboardInterrupt; the refusal is its cause.
            assert got[1:] == ["KeyboardInterrupt", "StoreBusy"], got
        else:
            assert got[1] == "StoreBusy", got
        shown = json.loads(lines.next("text").split(" ", 1)[1])
        assert shown.startswith("<0><1><2><3><4>"), shown
        # The child's lease has run out (nothing could renew it under the lock): still
        # the reply is the child's.
        [(lease,)] = lock.execute("SELECT lease_until FROM checkpoints").fetchall()
        assert lease < other.now(), (lease, other.now())
        assert_the_childs(other, cw)
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        # The lock is gone: the child's heartbeat writes the pending checkpoint at its next
        # round. Another worker that acts first finds the reply busy, never interrupted
        # with less than was shown.
        found = other.find_reply("r")
        assert found is not None
        resumed = None
        if found.state is ReplyState.INTERRUPTED:
            assert found.text == shown, (found.text, shown)
        else:
            assert found.state is ReplyState.STREAMING, found
            # The child's heartbeat may land the pending write between this read and the
            # resume: then the resume goes on from everything shown, never from less.
            try:
                resumed = cw.resume_call(found.id)
            except ReplyBusy:
                pass
            else:
                assert resumed.text == shown + "+more", (resumed.text, shown)
        send(child, "close")  # its store's close writes what is still pending
        lines.next("closed")
        assert child.wait(WAIT) == 0
        if resumed is None:
            [checkpoint] = cw.checkpoints()
            assert checkpoint.state is ReplyState.INTERRUPTED
            assert checkpoint.text == shown, (checkpoint.text, shown)
            reply = cw.resume_call(checkpoint.id)
            assert reply.text == shown + "+more"
        assert cw.checkpoints() == []
        stored = [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]
        assert stored == [shown + "+more"]
    finally:
        if lock is not None:
            lock.close()
        other.close()
        if child.poll() is None:
            child.kill()
        child.wait()


def test_no_hold_outlives_its_final_write(tmp_path: Any) -> None:
    """A reply is held only while its final write is under way (or pending): completed,
    interrupted or written after the lock, it is judged by its lease again (a process
    stopped past its lease later is taken over as before)."""
    from rxcontext import ProviderError, StreamInterrupted
    from rxcontext.store import sqlite_holds

    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=0.05)
    try:
        cut = ProviderError("the connection dropped", provider="scripted")
        model = ScriptedModel(
            [[Chunk(ChunkKind.TEXT, "a"), Chunk(ChunkKind.DONE)], [Chunk(ChunkKind.TEXT, "b"), cut]]
        )
        cw = ContextWindow(store, model, "c", retry=None)
        cw.add_prompt("hi")
        assert cw.call().text == "a"
        cw.add_prompt("again")
        with pytest.raises(StreamInterrupted) as cut_off:
            cw.call()
        checkpoint = cut_off.value.checkpoint
        holds = sqlite_holds.holds_path(db)
        assert holds is not None and os.path.exists(holds)  # both final writes held
        assert not sqlite_holds.held(holds, checkpoint.id, os.getpid(), here=True)
        assert sqlite_holds._files[holds].rows == {}
    finally:
        store.close()


HOLDS_CHILD = """
import sys
from rxcontext.store import sqlite_holds
path, row, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for line in sys.stdin:
    print(sqlite_holds.held(path, row, pid, here=False), flush=True)
"""


def test_a_hold_is_seen_by_another_process_until_it_is_let_go(tmp_path: Any) -> None:
    """The hold itself: another process sees it (naming this process), and not after it
    is let go; another row is never held by it."""
    from rxcontext.store import sqlite_holds

    holds = sqlite_holds.holds_path(str(tmp_path / "db.sqlite"))
    assert holds is not None
    release = sqlite_holds.hold(holds, 7)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDS_CHILD, holds, "7", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    lines = Lines(child.stdout)
    try:
        send(child, "look")
        assert lines.next("") == "True"
        assert sqlite_holds.held(holds, 7, os.getpid(), here=True)
        assert not sqlite_holds.held(holds, 8, os.getpid(), here=True)
        release()
        release()  # idempotent
        send(child, "look")
        assert lines.next("") == "False"
    finally:
        release()
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(WAIT) == 0


@pytest.mark.parametrize("read", ["find_reply", "checkpoints", "get_checkpoint"])
def test_a_reader_never_sees_a_held_reply_written_and_let_go_under_its_read_as_orphaned(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A reader reads a reply's row, then asks whether its owner holds it (its lease ran
    out): the owner's pending final write can land, and its hold go, between the two. The
    reader must not then judge the row it read before that write as orphaned: that showed
    another worker the reply interrupted with less than its user was shown (the CI failure
    of the ``completed`` case above: ``''`` for ``<0><1><2><3><4><end>``)."""
    from datetime import timedelta

    from rxcontext.store import CheckpointDraft, ReplyTicket, sqlite_holds
    from rxcontext.store.owner import worker_id

    db = str(tmp_path / "db.sqlite")
    at = [rxcontext.open(":memory:").clock()]
    owner = rxcontext.open(db, clock=lambda: at[0], lease_ttl=1.0)
    reader = rxcontext.open(db, clock=lambda: at[0], lease_ttl=1.0)
    try:
        cid = owner.get_or_create_context("c").id
        begun = owner.begin_reply(cid, "r", owner=worker_id())
        ticket = ReplyTicket(begun.id, begun.epoch)
        assert owner.save_checkpoint(ticket, CheckpointDraft("<0>"))
        release = owner.hold_reply(ticket)  # its final write is pending
        at[0] += timedelta(seconds=5)  # its lease ran out under another process's lock
        assert reader.find_reply("r").state is ReplyState.STREAMING  # held: still its owner's
        real = sqlite_holds.held
        landed: list[bool] = []

        def held_after_the_write_lands(*args: Any, **kw: Any) -> bool:
            if not landed:  # between the reader's read and its question, once
                landed.append(True)
                assert owner.save_checkpoint(
                    ticket, CheckpointDraft("<1>"), state=ReplyState.INTERRUPTED
                )
                release()
            return real(*args, **kw)

        monkeypatch.setattr(sqlite_holds, "held", held_after_the_write_lands)
        if read == "find_reply":
            found = reader.find_reply("r")
        elif read == "checkpoints":
            [found] = reader.checkpoints(cid)
        else:
            found = reader.get_checkpoint(begun.id)
        assert landed
        assert found is not None
        assert found.state is ReplyState.INTERRUPTED
        assert found.text == "<0><1>", found.text
    finally:
        owner.close()
        reader.close()


@pytest.mark.parametrize("read", ["find_reply", "get_checkpoint", "active_replies"])
def test_a_reader_sees_a_replys_row_and_its_text_as_of_one_moment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A checkpoint's row and its text's parts are two reads: another process's write landing
    between them showed a row with text it did not have yet (or, at a commit, no longer
    had: ``''``). They are read in one snapshot."""
    from rxcontext.store import CheckpointDraft, ReplyTicket
    from rxcontext.store.owner import worker_id
    from rxcontext.store.sqlite_replies import SQLiteReplies

    db = str(tmp_path / "db.sqlite")
    owner = rxcontext.open(db)
    reader = rxcontext.open(db)
    try:
        cid = owner.get_or_create_context("c").id
        begun = owner.begin_reply(cid, "r", owner=worker_id())
        ticket = ReplyTicket(begun.id, begun.epoch)
        assert owner.save_checkpoint(ticket, CheckpointDraft("<0>", chunks=1))
        real = SQLiteReplies._parts
        landed: list[bool] = []

        def parts_after_a_write(db: Any, checkpoint_id: int) -> Any:
            if not landed:  # between the reader's row and its parts, once
                landed.append(True)
                assert owner.save_checkpoint(ticket, CheckpointDraft("<1>", chunks=2))
            return real(db, checkpoint_id)

        monkeypatch.setattr(SQLiteReplies, "_parts", staticmethod(parts_after_a_write))
        if read == "find_reply":
            found = reader.find_reply("r")
        elif read == "get_checkpoint":
            found = reader.get_checkpoint(begun.id)
        else:
            [found] = reader.active_replies(cid)
        assert landed
        assert found is not None
        assert (found.chunks, found.text) == (1, "<0>"), found
    finally:
        owner.close()
        reader.close()


def test_stats_never_count_a_held_reply_completed_under_their_read_as_open(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``context_stats`` reads the live rows, then asks their holds: a reply whose final
    commit landed, and hold went, between the two was counted as an open checkpoint."""
    from datetime import timedelta

    from rxcontext.store import RecordDraft, ReplyTicket, sqlite_holds
    from rxcontext.store.owner import worker_id

    db = str(tmp_path / "db.sqlite")
    at = [rxcontext.open(":memory:").clock()]
    owner = rxcontext.open(db, clock=lambda: at[0], lease_ttl=1.0)
    reader = rxcontext.open(db, clock=lambda: at[0], lease_ttl=1.0)
    try:
        cid = owner.get_or_create_context("c").id
        begun = owner.begin_reply(cid, "r", owner=worker_id())
        ticket = ReplyTicket(begun.id, begun.epoch)
        release = owner.hold_reply(ticket)  # its final commit is under way
        at[0] += timedelta(seconds=5)
        assert reader.context_stats(cid).open_checkpoints == 0  # held: still its owner's
        real = sqlite_holds.held
        landed: list[bool] = []

        def held_after_the_commit_lands(*args: Any, **kw: Any) -> bool:
            if not landed:
                landed.append(True)
                owner.commit_reply(
                    cid, [RecordDraft(RecordType.MODEL_RESP, "done")], reply=ticket, end="done"
                )
                release()
            return real(*args, **kw)

        monkeypatch.setattr(sqlite_holds, "held", held_after_the_commit_lands)
        stats = reader.context_stats(cid)
        assert landed
        assert stats.open_checkpoints == 0
        assert stats.replies == 1
    finally:
        owner.close()
        reader.close()


def test_closing_writes_every_pending_reply_once_the_lock_goes_soon_after_the_first_wait(
    tmp_path: Any,
) -> None:
    """Three replies' final writes were refused by another connection's lock; the lock goes
    just after ``store.close()``'s first write waited ``busy_timeout`` and was refused (the
    first thing the heartbeat logs). Every reply's text is stored: after the first refusal
    ``close()`` keeps trying all the pending writes, the refused one included, without
    waiting, until about one ``busy_timeout`` more. Before the fix the refused one was given
    up at once and the others were tried once each (the reviewer's sqlite_close.py, lock gone
    1.5 s into close() with busy_timeout=1: all three lost; before e0fead0 r0 alone)."""
    replies = 3
    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=0.08, lease_ttl=1.0)
    go = threading.Event()
    errors: list[BaseException] = []
    streams = []
    lock = sqlite3.connect(db, timeout=10, check_same_thread=False)
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            lock.commit()

    handler = OnFirstRecord(release)
    logger = logging.getLogger("rxcontext.heartbeat")
    level = logger.level
    try:
        streams = start_replies(store, replies, go, errors, WAIT)
        lock.execute("BEGIN IMMEDIATE")
        go.set()  # every reply ends; its commit, then its failure's checkpoint, are refused
        for stream in streams:
            stream.join(WAIT)
            assert not stream.is_alive()
        assert len(errors) == replies and all(isinstance(e, StoreBusy) for e in errors), errors
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        store.close()
        assert released.is_set(), "close() logged nothing: no write was refused"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        go.set()
        release()
        lock.close()
        store.close()
    given_up = [r for r in handler.records if "could not be written" in r.getMessage()]
    assert given_up == [], [r.getMessage() for r in given_up]
    with rxcontext.open(db) as again:
        for i in range(replies):
            checkpoint = again.find_reply(f"r{i}")
            assert checkpoint is not None, f"r{i}"
            assert (checkpoint.state, checkpoint.text) == (ReplyState.INTERRUPTED, "hello"), i


def test_closing_tries_again_for_at_most_the_stores_own_wait(tmp_path: Any) -> None:
    """The no-wait rounds after close()'s first refusal last as long again as that first
    write waited, at most the store's ``busy_timeout``: the first write's time also counted
    its queue behind the store's lock (other replies' own final writes, waiting in turn),
    and close() then went on trying for that long (6.7 s more for 8 replies with
    ``busy_timeout=0.5``, a review's repro). Here the queue is the store's lock, held by
    another thread for a moment as close() begins."""
    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=0.05, lease_ttl=1.0)
    shown = threading.Semaphore(0)
    go = threading.Event()
    errors: list[BaseException] = []
    lock = sqlite3.connect(db, timeout=10, check_same_thread=False)
    handler = OnFirstRecord(lambda: None)
    logger = logging.getLogger("rxcontext.heartbeat")
    level = logger.level
    holding = threading.Event()
    let_go = threading.Event()

    def hold_the_store() -> None:
        with store._read():  # the queue: another reply's final write under way
            holding.set()
            let_go.wait(WAIT)

    try:
        cw = ContextWindow(store, Waiting(shown, go, WAIT), "c", retry=None)
        cw.add_prompt("go")
        stream = stream_in_thread(cw, "r", errors)
        assert shown.acquire(timeout=WAIT)
        lock.execute("BEGIN IMMEDIATE")
        go.set()
        stream.join(WAIT)
        assert not stream.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], StoreBusy), errors
        holder = threading.Thread(target=hold_the_store, daemon=True)
        holder.start()
        assert holding.wait(WAIT)
        # The store's lock goes 0.3 s on: the first write queues that long, then waits 0.05 s.
        threading.Timer(0.3, let_go.set).start()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        store.close()
        holder.join(WAIT)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        let_go.set()
        lock.close()
        store.close()
    [busy] = [r for r in handler.records if "still busy: trying" in r.getMessage()]
    more = busy.args[1]  # type: ignore[index]
    assert 0 < more <= 0.05, busy.getMessage()
