"""A checkpointer thread's tick pauses every ``SLICE`` of work so an event loop waiting for
the GIL gets it at once (rxcontext/checkpointer.py): replies that finish, or go on
streaming, while the tick is paused are stored exactly once, with their exact text."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, RecordType
from rxcontext import checkpointer as cp_module
from rxcontext.checkpointer import Checkpointer
from rxcontext.persist import ReplyPersister

REPLIES = 70  # pauses: three in the snapshots and the results, two in the rows


def _in_thread(call: Callable[[], object]) -> None:
    """``call`` on a thread of its own, as a driver's commit runs; it must not wait for the
    paused tick (which holds the reply's writer lock): joined, never left blocked."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # pragma: no cover - reported below
            failed.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)  # a deadlock guard, not a timing: the commit waits for nothing
    assert not worker.is_alive(), "a final commit waited for the paused tick"
    assert not failed, failed


@pytest.mark.parametrize("at", range(1, 9))
def test_replies_that_finish_or_grow_while_a_tick_is_paused_are_stored_once_exactly(
    tmp_path, monkeypatch, at: int
) -> None:
    """At the ``at``-th pause of a tick (every 32 replies with ``SLICE`` 0: three in the
    snapshots, two in the rows the store reads, three in the results), a reply already
    snapshotted (its write in flight) and one not yet reached finish on another thread,
    and another gets more text. Each finished reply's record is its whole text, with no
    checkpoint left; every other checkpoint holds exactly what its reply delivered, after
    this tick and the next."""
    monkeypatch.setattr(cp_module, "SLICE", 0.0)
    with rxcontext.open(tmp_path / "pause.db") as store:
        timer = Checkpointer(store, 1.0)  # a thread's checkpointer (no scheduler): it pauses
        replies: list[ReplyPersister] = []
        sent: list[str] = []
        for i in range(REPLIES):
            ctx = store.get_or_create_context(f"c{i}")
            p = ReplyPersister(store, ctx.id, checkpoint_every=1.0)
            p.begin()
            replies.append(p)
            sent.append("")
        for p in replies:
            timer._replies[id(p)] = p  # ticked here, not on the timer's thread

        def add(i: int, text: str) -> None:
            replies[i].add(Chunk(ChunkKind.TEXT, text))
            sent[i] += text

        for i in range(REPLIES):
            add(i, f"[{i}] café ")
        early, late, grows = 0, REPLIES - 1, 40
        pauses = 0

        def pause(seconds: float) -> None:
            nonlocal pauses
            pauses += 1
            if pauses != at:
                return
            for i in (early, late):
                add(i, "fin \U0001f600")
                p = replies[i]
                _in_thread(lambda p=p: p.complete(p.reply(), last=True))
            add(grows, "more ü")

        monkeypatch.setattr(cp_module, "_sleep", pause)
        timer.tick()
        assert pauses == 8
        for i in (early, late):
            timer.unregister(replies[i])
        add(grows, " end")
        timer.tick()
        for i, p in enumerate(replies):
            assert p.ticket is not None
            records = store.records(p.context_id)
            if i in (early, late):
                assert [(r.type, r.content) for r in records] == [(RecordType.MODEL_RESP, sent[i])]
                assert store.checkpoints(p.context_id) == []
                assert p.lost is None
            else:
                assert records == []
                assert store.get_checkpoint(p.ticket.checkpoint_id).text == sent[i]


def test_a_tick_writing_one_reply_never_pauses_inside_the_stores_transaction(
    tmp_path, monkeypatch
) -> None:
    """A tick with one reply to write: SQLite reads its one pair first inside its
    transaction (no batch is built before it), so a pause there would hold the database's
    write lock, and the store's, while it sleeps. None happens there."""
    monkeypatch.setattr(cp_module, "SLICE", 0.0)
    with rxcontext.open(tmp_path / "one.db") as store:
        timer = Checkpointer(store, 1.0)
        replies = []
        for i in range(40):
            p = ReplyPersister(store, store.get_or_create_context(f"c{i}").id, checkpoint_every=1.0)
            p.begin()
            p.add(Chunk(ChunkKind.TEXT, f"[{i}]"))
            timer._replies[id(p)] = p
            replies.append(p)
        timer.tick()  # every reply written once: nothing new left but what comes next
        replies[7].add(Chunk(ChunkKind.TEXT, " more"))
        inside: list[bool] = []

        def pause(seconds: float) -> None:
            conn = store._bg_conn
            inside.append(conn is not None and conn.in_transaction)

        monkeypatch.setattr(cp_module, "_sleep", pause)
        timer.tick()
        assert inside and not any(inside), inside
        assert replies[7].ticket is not None
        assert store.get_checkpoint(replies[7].ticket.checkpoint_id).text == "[7] more"
