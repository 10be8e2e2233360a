"""A reply's begin reads its first request's history in its own transaction
(``begin_reply_with_history``, both stores): the read is exactly what ``history()`` would
read in that snapshot, another process's writes before it are in it, writes after it reach
the next read, and a cache that moved meanwhile never takes an older read."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

import rxcontext
import rxcontext.operators
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, ReplyExists, ReplyState
from rxcontext.history import HistoryCache, request_history
from rxcontext.providers import ScriptedModel
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket
from rxcontext.store.owner import _start_time, worker_id


def _prompt(store: Any, context_id: str, text: str) -> None:
    store.add_record(context_id, RecordDraft(RecordType.PROMPT, text))


def test_the_begins_read_is_the_history_of_its_snapshot(target: str) -> None:
    mine, other = rxcontext.open(target), rxcontext.open(target)
    try:
        ctx = mine.get_or_create_context("c")
        _prompt(mine, ctx.id, "one")
        cache = HistoryCache(mine, ctx.id)
        assert [r.content for r in cache.live()] == ["one"]
        since = cache.since
        _prompt(other, ctx.id, "two")  # another process, before the begin
        other.set_live_range(ctx.id, 0, 0, False)
        ticket, pos, read = mine.begin_reply_with_history(
            ctx.id, "r1", owner=worker_id(), since=since, busy=True
        )
        [row] = mine.active_replies(ctx.id)
        assert (ticket.checkpoint_id, ticket.epoch, ticket.owner, pos) == (
            row.id,
            row.epoch,
            row.owner,
            row.pos,
        )
        assert read is not None
        version, changed, busy = read
        assert (version, changed) == mine.history(ctx.id, since=since)
        assert busy == {"r1"}  # its own row, streaming
        primed = cache.prime(since, version, changed, busy)
        assert primed is not None
        _prompt(other, ctx.id, "three")  # after the begin: after its place too
        records = request_history(mine, ctx.id, upto=pos, reply_id="r1", cache=cache, primed=primed)
        assert [r.content for r in records] == ["two"]
        assert cache.version == version + 1  # the request asked the store's version
        # Every read asks the store again: the other process's write is there.
        assert [r.content for r in cache.live()] == ["two", "three"]
        assert cache.live() == mine.records(ctx.id, live_only=True)
    finally:
        mine.close()
        other.close()


def test_nothing_changed_since_the_cache_reads_no_record(tmp_path: Any) -> None:
    store = rxcontext.open(tmp_path / "h.db")
    ctx = store.get_or_create_context("c")
    _prompt(store, ctx.id, "one")
    cache = HistoryCache(store, ctx.id)
    cache.live()
    statements: list[str] = []
    store._db().set_trace_callback(statements.append)
    _, _, read = store.begin_reply_with_history(
        ctx.id, "r1", owner=worker_id(), since=cache.since, busy=False
    )
    assert read is not None and read[1] == []
    assert not [s for s in statements if "FROM records WHERE context_id" in s]
    store.close()


def test_a_request_after_an_unchanged_begin_reads_the_version_alone(tmp_path: Any) -> None:
    """What the begin's read saves the first request: with nothing written since, the
    request asks the store's version (one statement) and neither the records nor which
    replies are busy (the begin read those in its snapshot)."""
    store = rxcontext.open(tmp_path / "h.db")
    ctx = store.get_or_create_context("c")
    _prompt(store, ctx.id, "one")
    done = store.begin_reply(ctx.id, "r0", owner=worker_id())
    store.commit_reply(
        ctx.id,
        [RecordDraft(RecordType.MODEL_RESP, "a0")],
        reply=ReplyTicket(done.id, done.epoch),
        end="reply",
    )
    cache = HistoryCache(store, ctx.id)
    cache.live()
    since = cache.since
    _, pos, read = store.begin_reply_with_history(
        ctx.id, "r1", owner=worker_id(), since=since, busy=cache.replies
    )
    assert read is not None
    primed = cache.prime(since, *read)
    statements: list[str] = []
    store._db().set_trace_callback(statements.append)
    records = request_history(store, ctx.id, upto=pos, reply_id="r1", cache=cache, primed=primed)
    store._db().set_trace_callback(None)
    assert [r.content for r in records] == ["one", "a0"]
    assert [s for s in statements if s.lstrip().upper().startswith("SELECT")] == [
        f"SELECT version, live_tokens FROM contexts WHERE id = '{ctx.id}'"
    ]
    store.close()


def test_a_cache_that_moved_on_takes_no_older_read(target: str) -> None:
    mine, other = rxcontext.open(target), rxcontext.open(target)
    try:
        ctx = mine.get_or_create_context("c")
        _prompt(mine, ctx.id, "one")
        cache = HistoryCache(mine, ctx.id)
        cache.live()
        since = cache.since
        _, _, read = mine.begin_reply_with_history(
            ctx.id, "r1", owner=worker_id(), since=since, busy=False
        )
        assert read is not None
        other.set_live_range(ctx.id, 0, 0, False)
        assert cache.live() == []  # another thread's read moved the cache on
        assert cache.prime(since, *read) is None
        assert cache.live() == []
    finally:
        mine.close()
        other.close()


def test_an_id_used_already_writes_nothing(target: str) -> None:
    store = rxcontext.open(target)
    try:
        ctx = store.get_or_create_context("c")
        _prompt(store, ctx.id, "one")
        store.begin_reply_with_history(ctx.id, "r1", owner=worker_id(), since=None, busy=False)
        before = store.history(ctx.id)[0]
        with pytest.raises(ReplyExists):
            store.begin_reply_with_history(ctx.id, "r1", owner=worker_id(), since=None, busy=True)
        assert store.history(ctx.id)[0] == before
        assert len(store.active_replies(ctx.id)) == 1
    finally:
        store.close()


def test_a_reply_streaming_beside_is_left_out_of_the_first_request(target: str) -> None:
    """The busy replies come from the begin's snapshot: a reply of another window still
    streaming (its tool round stored) is not in the request; once it ended, it is."""
    store = rxcontext.open(target)
    try:
        seen: list[list[str]] = []

        def spy(request: Any) -> Any:
            seen.append([r.content for r in request.records])

        model = ScriptedModel([[Chunk(ChunkKind.TEXT, "ok")]], repeat_last=True)
        cw = ContextWindow(store, model, context="c", checkpoint_every=None)
        cw.add_prompt("first")
        cw.call()  # a reply's records: the cache has met replies
        ctx = cw.context
        other = store.begin_reply(ctx.id, "beside", owner=worker_id())
        store.commit_reply(
            ctx.id,
            [RecordDraft(RecordType.MODEL_RESP, "half of beside")],
            reply=ReplyTicket(other.id, other.epoch),
            end="round",
        )
        cw.add_prompt("second")
        original = model.iter_chunks

        def iter_chunks(request: Any) -> Any:
            spy(request)
            return original(request)

        model.iter_chunks = iter_chunks  # type: ignore[method-assign]
        cw.call()
        assert seen[-1] == ["first", "ok", "second"]
        store.commit_reply(
            ctx.id,
            [RecordDraft(RecordType.MODEL_RESP, "rest")],
            reply=ReplyTicket(other.id, other.epoch),
            end="reply",
        )
        cw.add_prompt("third")
        cw.call()
        assert "half of beside" in seen[-1] and seen[-1][-1] == "third"
    finally:
        store.close()


def _asked(model: ScriptedModel) -> list[str | None]:
    return [r.content for r in model.requests[0].records]


@pytest.mark.parametrize("mode", ["call", "astream"])
def test_a_write_between_the_begin_and_the_request_is_in_it(target: str, mode: str) -> None:
    """``on_start`` runs after the reply's begin and before its first request: a record it
    hides must not be sent (the begin's read was older than the store by then)."""
    store = rxcontext.open(target)
    try:
        model = ScriptedModel([[Chunk(ChunkKind.TEXT, "hi")]], repeat_last=True)
        cw = ContextWindow(store, model, context="c", checkpoint_every=None)
        cw.add_prompt("SECRET: do not send")
        cw.add_prompt("question")
        hook = rxcontext.operators.middleware(
            on_start=lambda: cw.set_record_live_state(0, 0, False)
        )
        if mode == "call":
            cw.call(hook)
        else:

            async def go() -> None:
                async for _ in cw.astream(hook):
                    pass

            asyncio.run(go())
        assert _asked(model) == ["question"]
    finally:
        store.close()


def test_a_reply_that_ended_after_the_begin_is_in_a_request_read_later(target: str) -> None:
    """The busy replies the begin read hold only for the records it read: when another
    request moved the shared cache first, the records come from a later read, and a reply
    busy at the begin that ended before it is in them (and must not be left out)."""
    store = rxcontext.open(target)
    try:
        ctx = store.get_or_create_context("c")
        _prompt(store, ctx.id, "q")
        cache = HistoryCache(store, ctx.id)
        done = store.begin_reply(ctx.id, "r0", owner=worker_id())
        store.commit_reply(
            ctx.id,
            [RecordDraft(RecordType.MODEL_RESP, "a0")],
            reply=ReplyTicket(done.id, done.epoch),
            end="reply",
        )
        cache.live()  # the cache has met a reply's records: requests ask which are busy
        assert cache.replies
        r2 = store.begin_reply(ctx.id, "r2", owner=worker_id())
        since = cache.since
        _, pos, read = store.begin_reply_with_history(
            ctx.id, "a", owner=worker_id(), since=since, busy=True
        )
        assert read is not None and read[2] == {"r2", "a"}
        primed = cache.prime(since, *read)
        assert primed is not None
        store.commit_reply(
            ctx.id,
            [RecordDraft(RecordType.MODEL_RESP, "answer-r2")],
            reply=ReplyTicket(r2.id, r2.epoch),
            end="reply",
        )
        other = threading.Thread(target=cache.live)  # another reply's request
        other.start()
        other.join()
        records = request_history(store, ctx.id, upto=pos, reply_id="a", cache=cache, primed=primed)
        assert [r.content for r in records] == ["q", "a0", "answer-r2"]
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["call", "astream"])
def test_a_reply_that_ended_before_the_first_request_is_in_it(target: str, mode: str) -> None:
    """Through a window, with server-side threading: a reply streaming beside at this
    one's begin ends before its first request (in ``on_start``), and another reply of the
    window reads the shared cache meanwhile; the request carries the ended reply."""
    store = rxcontext.open(target)
    try:
        model = ScriptedModel([[Chunk(ChunkKind.TEXT, "ok")]], repeat_last=True)
        cw = ContextWindow(store, model, context="c", checkpoint_every=None)
        cw.add_prompt("q1")
        cw.call()
        cw.add_prompt("q2")
        cw.call()  # its request read the first reply's records: the cache has met replies
        ctx = cw.context
        beside = store.begin_reply(ctx.id, "beside", owner=worker_id())
        cw.add_prompt("q3")

        def meanwhile() -> None:
            store.commit_reply(
                ctx.id,
                [RecordDraft(RecordType.MODEL_RESP, "answer-beside")],
                reply=ReplyTicket(beside.id, beside.epoch),
                end="reply",
            )
            other = threading.Thread(target=cw.call)  # moves the window's shared cache
            other.start()
            other.join()

        hook = rxcontext.operators.middleware(on_start=meanwhile)
        if mode == "call":
            cw.call(hook)
        else:

            async def go() -> None:
                async for _ in cw.astream(hook):
                    pass

            asyncio.run(go())
        first = model.requests[3].records  # this reply's (the other one's, in on_start, before)
        assert [r.content for r in first] == ["q1", "ok", "q2", "ok", "answer-beside", "q3"]
    finally:
        store.close()


def test_a_begin_asked_no_read_makes_none(target: str) -> None:
    """A window whose cache met no reply begins without the read (``read=False``): the
    first request's read would cost what it saves."""
    store = rxcontext.open(target)
    try:
        ctx = store.get_or_create_context("c")
        _prompt(store, ctx.id, "one")
        ticket, pos, read = store.begin_reply_with_history(
            ctx.id, "r1", owner=worker_id(), since=None, busy=False, read=False
        )
        [row] = store.active_replies(ctx.id)
        assert (read, ticket.checkpoint_id, pos) == (None, row.id, row.pos)
    finally:
        store.close()


# A reply's busy state can change while the context's version stays where the begin read
# it: a cut or a claim writes only the reply's row, and an owner's death or a lease running
# out writes nothing. The first request must see the replies busy when it reads, as every
# request does, not those of the begin's snapshot.

_ROUND = ["{}", "round of beside"]


def _first_request_beside(
    target: str,
    mode: str,
    *,
    owner: str | None = None,
    cut_before: bool = False,
    between: Callable[[Any, ReplyTicket], None],
) -> list[str]:
    """What a window's reply sends first, with a reply "beside" of another process that
    stored a tool round (cut before the begin, if asked) and ``between`` done to it after
    the begin and before the request (in ``on_start``)."""
    store, other = rxcontext.open(target), rxcontext.open(target)
    try:
        model = ScriptedModel([[Chunk(ChunkKind.TEXT, "ok")]], repeat_last=True)
        cw = ContextWindow(store, model, context="c", checkpoint_every=None)
        cw.add_prompt("q1")
        cw.call()
        cw.add_prompt("q2")
        cw.call()  # its request read the first reply's records: the cache has met replies
        ctx = cw.context
        beside = other.begin_reply(ctx.id, "beside", owner=owner or worker_id())
        ticket = ReplyTicket(beside.id, beside.epoch, beside.owner)
        other.commit_reply(
            ctx.id,
            [
                RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="f"),
                RecordDraft(RecordType.TOOL_OUTPUT, _ROUND[1], tool_call_id="c1", tool_name="f"),
            ],
            reply=ticket,
            end="round",
        )
        if cut_before:
            assert other.save_checkpoint(
                ticket, CheckpointDraft("", chunks=0), state=ReplyState.INTERRUPTED
            )
        cw.add_prompt("q3")
        hook = rxcontext.operators.middleware(on_start=lambda: between(other, ticket))
        model.requests.clear()
        if mode == "call":
            cw.call(hook)
        else:

            async def go() -> None:
                async for _ in cw.astream(hook):
                    pass

            asyncio.run(go())
        return [str(r.content) for r in model.requests[0].records]
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize("mode", ["call", "astream"])
def test_a_reply_cut_before_the_first_request_is_in_it(target: str, mode: str) -> None:
    """Streaming at the begin, cut (its row alone written) before the request: its stored
    tool round is history now, and a request leaving it out would leave it out of a
    server-side thread for good."""

    def cut(other: Any, ticket: ReplyTicket) -> None:
        assert other.save_checkpoint(
            ticket, CheckpointDraft("", chunks=0), state=ReplyState.INTERRUPTED
        )

    sent = _first_request_beside(target, mode, between=cut)
    assert sent == ["q1", "ok", "q2", "ok", *_ROUND, "q3"]


@pytest.mark.parametrize("mode", ["call", "astream"])
def test_a_reply_claimed_before_the_first_request_is_left_out(target: str, mode: str) -> None:
    """Interrupted at the begin, claimed for a resume (its row alone written) before the
    request: it is being generated again, its round not history (module docstring)."""

    def claim(other: Any, ticket: ReplyTicket) -> None:
        other.claim_checkpoint(ticket.checkpoint_id, owner="another-worker")

    sent = _first_request_beside(target, mode, cut_before=True, between=claim)
    assert sent == ["q1", "ok", "q2", "ok", "q3"]


@pytest.mark.parametrize("mode", ["call", "astream"])
def test_a_reply_whose_owner_died_before_the_first_request_is_in_it(target: str, mode: str) -> None:
    """Its owner (a process of this host) ends after the begin: nothing is written, yet the
    reply is not busy any more (as when a lease runs out), and its round is history."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        start = _start_time(child.pid)
        if start is None:
            pytest.skip("needs /proc to name another live process of this host")
        owner = f"{worker_id().split(':')[0]}:{child.pid}:{start}"

        def die(other: Any, ticket: ReplyTicket) -> None:
            assert other.get_checkpoint(ticket.checkpoint_id).state is ReplyState.STREAMING
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)

        sent = _first_request_beside(target, mode, owner=owner, between=die)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
    assert sent == ["q1", "ok", "q2", "ok", *_ROUND, "q3"]
