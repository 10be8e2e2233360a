"""A reply's first request, between its begin and the send (``on_start``, another process,
time): it carries what the store holds when it is read, not what it held at the begin.

Both stores, ``call`` and ``astream``. Written against the begin's history read (the
store-internal ``begin_reply_with_history``, removed): a write after the begin was not
sent, and a reply whose busy state changed after it (ended, cut, claimed, its owner dead)
was left out or sent by what the begin had read."""

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
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, ReplyState
from rxcontext.providers import ScriptedModel
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket
from rxcontext.store.owner import _start_time, worker_id


def test_a_reply_streaming_beside_is_left_out_of_the_first_request(target: str) -> None:
    """A reply of another window still streaming (its tool round stored) is not in the
    request; once it ended, it is."""
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
