"""Reply lifecycle conformance: what every store (SQLite, PostgreSQL) must do with replies.

Fencing (a writer whose reply was interrupted, claimed, kept or discarded writes nothing),
orphans (a reply whose owner died reads as interrupted and can be taken over), keep and
discard, reply ids, positions, tool rounds and batched periodic writes. The rest of the
store's conformance suite is tests/test_store.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

import rxcontext
from rxcontext import (
    CheckpointNotFound,
    CheckpointResolved,
    OwnershipLost,
    RecordType,
    ReplyBusy,
    ReplyExists,
    ReplyState,
    Usage,
)
from rxcontext.interop import fork_context
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket, Store
from rxcontext.store.base import IN_PROGRESS, ORPHANED
from rxcontext.store.owner import worker_id
from rxcontext.store.sqlite_replies import BULK_CHARS

DEAD = f"{worker_id().split(':')[0]}:{os.getpid()}:not-this-process"
"""A worker id of this process table whose process is gone (its pid now runs another one)."""
ELSEWHERE = "elsewhere.invalid:4242:1"
"""A worker on another host: only its lease says whether it is alive."""


def P(content: str) -> RecordDraft:
    return RecordDraft(RecordType.PROMPT, content)


def R(content: str, **kw: Any) -> RecordDraft:
    return RecordDraft(RecordType.MODEL_RESP, content, **kw)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    target = request.getfixturevalue("pg_url") if request.param == "postgres" else ":memory:"
    s = rxcontext.open(target)
    yield s
    s.close()


def begin(store: Store, context_id: str, reply_id: str, owner: str | None = None) -> ReplyTicket:
    cp = store.begin_reply(context_id, reply_id, owner=owner or worker_id())
    return ReplyTicket(cp.id, cp.epoch)


def texts(store: Store, context_id: str) -> list[str]:
    return [r.content for r in store.records(context_id)]


# -- Fencing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("takeover", ["interrupt", "claim", "discard", "keep"])
def test_a_ticket_writes_nothing_once_its_reply_moved_on(store: Store, takeover: str):
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    owner = worker_id() if takeover == "interrupt" else DEAD  # the others need an orphan
    old = begin(store, ctx.id, "r", owner)
    assert store.save_checkpoint(old, CheckpointDraft("so far", chunks=1))
    if takeover == "interrupt":
        assert store.save_checkpoint(old, CheckpointDraft(), state=ReplyState.INTERRUPTED)
    elif takeover == "claim":
        assert store.claim_checkpoint(old.checkpoint_id, owner=worker_id()).epoch == 2
    elif takeover == "discard":
        store.discard_checkpoint(old.checkpoint_id)
    else:
        store.keep_checkpoint(old.checkpoint_id)
    before = (texts(store, ctx.id), store.get_checkpoint(old.checkpoint_id))

    assert not store.save_checkpoint(old, CheckpointDraft(" late", chunks=9))
    assert store.save_checkpoints([(old, CheckpointDraft(" later"))]) in ([False], None)
    assert not store.save_checkpoint(old, CheckpointDraft(), state=ReplyState.INTERRUPTED)
    for end in ("reply", "round"):
        with pytest.raises(OwnershipLost, match="taken over or settled elsewhere"):
            store.commit_reply(ctx.id, [R("late reply")], reply=old, end=end)  # type: ignore[arg-type]
    assert (texts(store, ctx.id), store.get_checkpoint(old.checkpoint_id)) == before


def test_tool_outputs_land_after_an_interrupt_but_not_after_a_takeover(store: Store):
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("weather?"))
    ticket = begin(store, ctx.id, "r")
    call = RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="w")
    store.commit_reply(ctx.id, [call], reply=ticket, end="round")
    # Cancelled while the tool ran: the reply is interrupted, but the tool did run.
    assert store.save_checkpoint(ticket, CheckpointDraft(), state=ReplyState.INTERRUPTED)
    output = RecordDraft(RecordType.TOOL_OUTPUT, "sunny", tool_call_id="c1", tool_name="w")
    (out,) = store.commit_reply(ctx.id, [output], reply=ticket)
    assert (out.pos, out.reply_id) == (1, "r")
    with pytest.raises(OwnershipLost):
        store.commit_reply(ctx.id, [R("answer")], reply=ticket, end="reply")
    claimed = store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    with pytest.raises(OwnershipLost):
        store.commit_reply(ctx.id, [output], reply=ticket)  # the old epoch, after a claim
    assert texts(store, ctx.id) == ["weather?", "{}", "sunny"]
    new = ReplyTicket(claimed.id, claimed.epoch)
    store.commit_reply(ctx.id, [R("sunny it is")], reply=new, end="reply")
    assert [(r.content, r.pos) for r in store.records(ctx.id)][-1] == ("sunny it is", 1)


# -- Orphans -----------------------------------------------------------------------------------


def test_a_reply_whose_process_died_reads_as_interrupted_and_can_be_taken_over(store: Store):
    ctx = store.get_or_create_context("c")
    orphan = begin(store, ctx.id, "r", DEAD)
    assert store.save_checkpoint(orphan, CheckpointDraft("half"))
    seen = store.get_checkpoint(orphan.checkpoint_id)
    assert (seen.state, seen.error, seen.text) == (ReplyState.INTERRUPTED, ORPHANED, "half")
    assert store.find_reply("r") == seen
    assert store.checkpoints(ctx.id) == [seen]
    assert store.active_replies(ctx.id) == []
    claimed = store.claim_checkpoint(orphan.checkpoint_id, owner=worker_id())
    assert (claimed.state, claimed.epoch, claimed.owner) == (ReplyState.RESUMING, 2, worker_id())
    assert [c.id for c in store.active_replies(ctx.id)] == [orphan.checkpoint_id]
    assert store.checkpoints(ctx.id) == []


def test_a_reply_of_another_host_is_orphaned_when_its_lease_runs_out(store: Store):
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r", ELSEWHERE)
    assert [c.state for c in store.active_replies(ctx.id)] == [ReplyState.STREAMING]
    with pytest.raises(ReplyBusy):
        store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    store.lease_ttl = -1.0  # its heartbeat now sets a lease already over: as if it stopped
    store.renew_leases(ELSEWHERE)
    assert store.active_replies(ctx.id) == []
    assert store.get_checkpoint(ticket.checkpoint_id).state is ReplyState.INTERRUPTED
    store.lease_ttl = 60.0  # it renews again in time: it is alive after all
    store.renew_leases(ELSEWHERE)
    assert store.get_checkpoint(ticket.checkpoint_id).state is ReplyState.STREAMING
    store.lease_ttl = -1.0
    store.renew_leases(ELSEWHERE)
    store.lease_ttl = 60.0
    claimed = store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    assert claimed.epoch == 2
    store.renew_leases(ELSEWHERE)  # the presumed-dead worker's heartbeat changes nothing now
    after = store.get_checkpoint(ticket.checkpoint_id)
    assert (after.state, after.owner) == (ReplyState.RESUMING, worker_id())
    assert not store.save_checkpoint(ticket, CheckpointDraft("zombie"))


def test_the_stats_count_the_orphans_checkpoints_lists(store: Store):
    """``open_checkpoints`` (what ``rxcontext contexts list`` shows) counts what
    ``checkpoints()`` lists: a reply whose owner died, or whose lease ran out on another
    host, is open for everyone though its row still reads streaming. It counted only rows
    marked interrupted, so a worker SIGKILLed mid-reply left a resumable reply the listing
    said was not there."""
    ctx = store.get_or_create_context("c")
    other = store.get_or_create_context("o")
    store.add_record(ctx.id, P("q"))
    begin(store, ctx.id, "dead", DEAD)  # its process is gone: open at once
    begin(store, ctx.id, "far", ELSEWHERE)  # another host, its lease runs out below
    begin(store, ctx.id, "live")  # this process, leased: still streaming
    stopped = begin(store, ctx.id, "stopped")
    assert store.save_checkpoint(stopped, CheckpointDraft("s"), state=ReplyState.INTERRUPTED)
    resumed = begin(store, ctx.id, "resumed", DEAD)
    store.claim_checkpoint(resumed.checkpoint_id, owner=worker_id())  # RESUMING, ours
    begin(store, other.id, "elsewhere-dead", DEAD)  # another context's: not counted here
    assert {cp.reply_id for cp in store.checkpoints(ctx.id)} == {"dead", "stopped"}
    assert store.context_stats(ctx.id).open_checkpoints == 2
    store.lease_ttl = -1.0  # its heartbeat now sets a lease already over: as if it stopped
    store.renew_leases(ELSEWHERE)
    assert {cp.reply_id for cp in store.checkpoints(ctx.id)} == {"dead", "far", "stopped"}
    assert store.context_stats(ctx.id).open_checkpoints == 3
    assert store.context_stats(other.id).open_checkpoints == len(store.checkpoints(other.id)) == 1


def test_live_replies_cannot_be_settled(store: Store):
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r")
    for settle in (
        lambda: store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id()),
        lambda: store.discard_checkpoint(ticket.checkpoint_id),
        lambda: store.keep_checkpoint(ticket.checkpoint_id),
    ):
        with pytest.raises(ReplyBusy, match="is still streaming") as info:
            settle()
        assert info.value.state == "streaming"
    assert store.get_checkpoint(ticket.checkpoint_id).epoch == 1


# -- Keep and discard --------------------------------------------------------------------------


def test_keep_stores_the_partial_text_in_the_replys_own_place(store: Store):
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q1"))
    ticket = begin(store, ctx.id, "r")
    store.add_record(ctx.id, P("q2"))  # the conversation went on meanwhile
    assert store.save_checkpoint(ticket, CheckpointDraft("half an ans"))
    assert store.save_checkpoint(ticket, CheckpointDraft("wer"), state=ReplyState.INTERRUPTED)
    (kept,) = store.keep_checkpoint(ticket.checkpoint_id)
    assert (kept.type, kept.content, kept.pos, kept.reply_id) == (
        RecordType.MODEL_RESP,
        "half an answer",
        1,
        "r",
    )
    assert dict(kept.metadata) == {"partial": True} and kept.streamed
    assert store.records(ctx.id)[1] == kept
    assert texts(store, ctx.id) == ["q1", "half an answer", "q2"]
    cp = store.get_checkpoint(ticket.checkpoint_id)
    assert (cp.state, cp.epoch, cp.owner) == (ReplyState.COMPLETED, 2, None)
    assert cp.resolved_at is not None and store.checkpoints(ctx.id) == []
    with pytest.raises(CheckpointResolved, match="already completed"):
        store.keep_checkpoint(ticket.checkpoint_id)


def test_keep_refuses_an_empty_checkpoint_and_changes_nothing(store: Store):
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r")
    assert store.save_checkpoint(ticket, CheckpointDraft(), state=ReplyState.INTERRUPTED)
    with pytest.raises(ValueError, match="no text to keep; discard it instead"):
        store.keep_checkpoint(ticket.checkpoint_id)
    cp = store.get_checkpoint(ticket.checkpoint_id)
    assert (cp.state, cp.epoch) == (ReplyState.INTERRUPTED, 1)
    assert store.records(ctx.id) == []


def test_discard_keeps_the_row_for_audit(store: Store):
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r")
    assert store.save_checkpoint(ticket, CheckpointDraft("no"), state=ReplyState.INTERRUPTED)
    gone = store.discard_checkpoint(ticket.checkpoint_id)
    assert (gone.state, gone.epoch, gone.text) == (ReplyState.DISCARDED, 2, "no")
    stored = store.get_checkpoint(ticket.checkpoint_id)
    assert (stored.state, stored.epoch, stored.text) == (ReplyState.DISCARDED, 2, "no")
    assert stored.resolved and stored.resolved_at is not None
    assert store.checkpoints(ctx.id) == []
    assert store.checkpoints(ctx.id, include_resolved=True) == [stored]
    # What it delivered was billed: a dead record of its own keeps it for the cost, at a
    # new position (its reply's stays empty), named by no reply.
    (dead,) = store.records(ctx.id)
    assert (dead.type, dead.content, dead.live) == (RecordType.MODEL_RESP, "no", False)
    assert dead.metadata == {"partial": True, "discarded": True} and dead.reply_id is None
    assert stored.pos is not None and dead.pos > stored.pos
    assert store.reply_records("r") == [] and store.live_tokens(ctx.id) == 0
    assert store.context_stats(ctx.id).open_checkpoints == 0
    with pytest.raises(CheckpointResolved, match="already discarded"):
        store.discard_checkpoint(ticket.checkpoint_id)
    with pytest.raises(CheckpointResolved):
        store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())


# -- Reply ids, positions, rounds -----------------------------------------------------------------


def test_reply_ids_are_unique_even_after_the_row_is_gone(store: Store):
    ctx = store.get_or_create_context("c")
    other = store.get_or_create_context("other")
    done = begin(store, ctx.id, "done")
    store.commit_reply(ctx.id, [R("a")], reply=done, end="reply")
    assert store.find_reply("done") is None  # completed without a cut: only its records
    begin(store, ctx.id, "open")
    for rid, where in [("done", ctx.id), ("open", ctx.id), ("open", other.id)]:
        with pytest.raises(ReplyExists, match="already used"):
            store.begin_reply(where, rid, owner=worker_id())
    with pytest.raises(TypeError):
        store.begin_reply(ctx.id, "", owner=worker_id())
    # A refused begin takes no position.
    assert store.begin_reply(ctx.id, "next", owner=worker_id()).pos == 2


def test_positions_are_allocated_in_order_and_a_reply_keeps_its_place(store: Store):
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q1"))  # 0
    first = begin(store, ctx.id, "first")  # 1
    store.add_record(ctx.id, P("q2"))  # 2
    second = begin(store, ctx.id, "second")  # 3
    store.commit_reply(ctx.id, [R("late"), R("later")])  # 4 (one reply, one place)
    # The second reply ends first; each is stored in its own place.
    store.commit_reply(ctx.id, [R("two")], reply=second, end="reply")
    store.commit_reply(ctx.id, [R("one")], reply=first, end="reply")
    store.add_record(ctx.id, P("q3"))  # 5
    got = [(r.content, r.pos, r.reply_id) for r in store.records(ctx.id)]
    assert got == [
        ("q1", 0, None),
        ("one", 1, "first"),
        ("q2", 2, None),
        ("two", 3, "second"),
        ("late", 4, None),
        ("later", 4, None),
        ("q3", 5, None),
    ]
    # A reply's history: the records up to its place, its own included.
    assert [r.content for r in store.records(ctx.id, upto=1)] == ["q1", "one"]
    assert [r.content for r in store.records(ctx.id, live_only=True, upto=3)] == [
        "q1",
        "one",
        "q2",
        "two",
    ]


def test_a_round_keeps_the_reply_streaming_and_starts_its_checkpoint_over(store: Store):
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r")
    assert store.save_checkpoint(
        ticket, CheckpointDraft("Let me look", tool_calls=[{"index": 0}], chunks=3)
    )
    call = RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="w")
    store.commit_reply(ctx.id, [R("Let me look"), call], reply=ticket, end="round")
    cp = store.get_checkpoint(ticket.checkpoint_id)
    assert (cp.state, cp.text, cp.tool_calls, cp.chunks) == (ReplyState.STREAMING, "", (), 0)
    assert store.save_checkpoint(ticket, CheckpointDraft("It is"))
    assert store.save_checkpoint(ticket, CheckpointDraft(" sunny"))
    assert store.get_checkpoint(ticket.checkpoint_id).text == "It is sunny"
    store.commit_reply(ctx.id, [R("It is sunny")], reply=ticket, end="reply", usage=Usage.of(2, 3))
    assert store.find_reply("r") is None
    assert {(r.pos, r.reply_id) for r in store.records(ctx.id)} == {(0, "r")}
    assert texts(store, ctx.id) == ["Let me look", "{}", "It is sunny"]
    assert store.context_stats(ctx.id).usage == Usage.of(2, 3)


def test_a_resumed_reply_completes_in_its_place_and_keeps_its_row(store: Store):
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    ticket = begin(store, ctx.id, "r")
    assert store.save_checkpoint(ticket, CheckpointDraft("Hel"), state=ReplyState.INTERRUPTED)
    store.add_record(ctx.id, P("meanwhile"))
    claimed = store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    resumed = ReplyTicket(claimed.id, claimed.epoch)
    assert store.save_checkpoint(resumed, CheckpointDraft("lo"))  # the continuation
    assert store.get_checkpoint(claimed.id).text == "Hello"
    store.commit_reply(ctx.id, [R("Hello")], reply=resumed, end="reply")
    assert texts(store, ctx.id) == ["q", "Hello", "meanwhile"]
    done = store.get_checkpoint(claimed.id)
    assert (done.state, done.epoch, done.text) == (ReplyState.COMPLETED, 2, "Hel")


@pytest.mark.parametrize("settle", ["keep", "discard", "resume", "resume, a round", "resume twice"])
def test_a_settled_row_holds_what_the_reply_had_delivered_when_it_was_cut(
    store: Store, settle: str
):
    # However an interrupted reply is settled, its row keeps (for audit) the text and the
    # thinking it held when it was last cut; the reply itself is in its records.
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    ticket = begin(store, ctx.id, "r")
    cid = ticket.checkpoint_id
    assert store.save_checkpoint(ticket, CheckpointDraft("Hel", "hm"))
    assert store.save_checkpoint(
        ticket, CheckpointDraft("lo \x00😀", ".", error="cut"), state=ReplyState.INTERRUPTED
    )
    cut = ("Hello \x00😀", "hm.")
    if settle == "keep":
        store.keep_checkpoint(cid)
    elif settle == "discard":
        store.discard_checkpoint(cid)
    else:
        resumed = ReplyTicket(cid, store.claim_checkpoint(cid, owner=worker_id()).epoch)
        assert store.save_checkpoint(resumed, CheckpointDraft(" wor", " ok"))
        if settle == "resume twice":  # cut again, then claimed again
            assert store.save_checkpoint(
                resumed, CheckpointDraft("ld"), state=ReplyState.INTERRUPTED
            )
            cut = ("Hello \x00😀 world", "hm. ok")
            resumed = ReplyTicket(cid, store.claim_checkpoint(cid, owner=worker_id()).epoch)
            assert store.save_checkpoint(resumed, CheckpointDraft("!"))
        if settle == "resume, a round":  # its checkpoint starts over for the next round
            call = RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="w")
            store.commit_reply(ctx.id, [R("Hello \x00😀 wor"), call], reply=resumed, end="round")
            assert store.get_checkpoint(cid).text == ""
            assert store.save_checkpoint(resumed, CheckpointDraft("It is"))
        store.commit_reply(ctx.id, [R("the rest")], reply=resumed, end="reply")
    row = store.get_checkpoint(cid)
    assert row.resolved and (row.text, row.thinking) == cut
    assert store.checkpoints(ctx.id, include_resolved=True) == [row]


def test_periodic_batches_write_many_replies_and_fence_each_one(store: Store):
    a = store.get_or_create_context("a")
    b = store.get_or_create_context("b")
    ta, tb = begin(store, a.id, "ra"), begin(store, b.id, "rb")
    fenced = begin(store, a.id, "rc")
    assert store.save_checkpoint(fenced, CheckpointDraft("x"), state=ReplyState.INTERRUPTED)
    assert store.save_checkpoints([]) == []
    for step in ("one ", "two"):
        done = store.save_checkpoints(
            [
                (ta, CheckpointDraft(f"a:{step}", chunks=1)),
                (fenced, CheckpointDraft(step)),
                (tb, CheckpointDraft(f"b:{step}", append_thinking=step)),
            ]
        )
        assert done == [True, False, True]
    assert store.get_checkpoint(ta.checkpoint_id).text == "a:one a:two"
    got = store.get_checkpoint(tb.checkpoint_id)
    assert (got.text, got.thinking) == ("b:one b:two", "one two")
    assert store.get_checkpoint(fenced.checkpoint_id).text == "x"
    store.renew_leases(worker_id())
    assert {c.reply_id for c in store.active_replies(a.id)} == {"ra"}


def test_a_batch_of_periodic_writes_stores_what_one_write_at_a_time_does(store: Store):
    """Each checkpoint of a batch of periodic writes (SQLite writes a batch in one statement
    per table) is stored exactly as writing its drafts one at a time stores it: every field,
    text that is not ASCII, a surrogate pair cut between two writes, parts of thinking only,
    JSON escapes in the text; and a batch with NUL characters (which SQLite's JSON cuts)."""
    clean = [
        [
            CheckpointDraft("Hé\u2028llo ", chunks=2, metadata={"k": ["v", 1]}),
            CheckpointDraft("wörld \U0001f600", append_thinking="hm", chunks=4),
        ],
        [
            CheckpointDraft(
                "",
                append_thinking="just thinking",
                tool_calls=[{"index": 0, "id": "c1", "name": "f", "arguments": '{"a": 1'}],
                chunks=1,
            ),
            CheckpointDraft(
                "and text", error="why not", usage=Usage.of(3, 4), response_id="resp-1", chunks=2
            ),
        ],
        [CheckpointDraft("half \ud83d"), CheckpointDraft("\ude00 joined", chunks=3)],
        [CheckpointDraft('\\u0000 \\ "quoted"', chunks=1), CheckpointDraft("", chunks=1)],
    ]
    nul = [
        [CheckpointDraft("a\x00b", chunks=1), CheckpointDraft("\x00c", chunks=2)],
        [CheckpointDraft("d", error="e\x00f"), CheckpointDraft("g", append_thinking="\x00")],
    ]

    def seen(ticket: ReplyTicket) -> tuple[Any, ...]:
        c = store.get_checkpoint(ticket.checkpoint_id)
        return (
            c.text,
            c.thinking,
            c.tool_calls,
            c.usage,
            c.error,
            c.chunks,
            c.response_id,
            c.metadata,
            c.state,
        )

    for group, drafts in enumerate((clean, nul)):
        one_by_one, batched = [], []
        for i in range(len(drafts)):
            ctx = store.get_or_create_context(f"c{group}-{i}")
            one_by_one.append(begin(store, ctx.id, f"single-{group}-{i}"))
            batched.append(begin(store, ctx.id, f"batch-{group}-{i}"))
        for step in range(2):
            for ticket, steps in zip(one_by_one, drafts, strict=True):
                assert store.save_checkpoints([(ticket, steps[step])]) == [True]
            batch = [(t, steps[step]) for t, steps in zip(batched, drafts, strict=True)]
            assert store.save_checkpoints(batch) == [True] * len(drafts)
        for a, b in zip(one_by_one, batched, strict=True):
            assert seen(b) == seen(a)
        if group == 0:
            assert seen(batched[0])[:2] == ("Hé\u2028llo wörld \U0001f600", "hm")
            assert seen(batched[1])[3:7] == (Usage.of(3, 4), "why not", 2, "resp-1")
        else:
            assert seen(batched[0])[0] == "a\x00b\x00c"
    # One batch of all kinds: the one-statement rows, a NUL, a long part, a reply twice.
    long = "long " * (BULK_CHARS // 4)
    writes = [
        CheckpointDraft("x", chunks=1),
        CheckpointDraft("y\x00", chunks=1),
        CheckpointDraft(long, append_thinking="t", chunks=1),
        CheckpointDraft("z", chunks=1),
        CheckpointDraft("x again", chunks=2),
    ]
    which = [0, 1, 2, 3, 0]
    singles, batch = [], []
    for i in range(4):
        ctx = store.get_or_create_context(f"mixed-{i}")
        singles.append(begin(store, ctx.id, f"mixed-single-{i}"))
        batch.append(begin(store, ctx.id, f"mixed-batch-{i}"))
    for i, draft in zip(which, writes, strict=True):
        assert store.save_checkpoints([(singles[i], draft)]) == [True]
    pairs = [(batch[i], d) for i, d in zip(which, writes, strict=True)]
    assert store.save_checkpoints(pairs) == [True] * len(writes)
    for a, b in zip(singles, batch, strict=True):
        assert seen(b) == seen(a)
    assert (seen(batch[0])[0], seen(batch[0])[5]) == ("xx again", 2)
    assert seen(batch[2])[:2] == (long, "t")


@pytest.mark.parametrize("first", ["first\x00", "L" * (BULK_CHARS + 1)], ids=["nul", "long"])
def test_a_batch_keeps_a_replys_writes_in_order_when_its_first_is_written_apart(
    store: Store, first: str
):
    """A reply's first write of a batch is written by statements of its own (a NUL, or a
    part over ``BULK_CHARS``) and its second would fit the one-statement rows: the second
    must still land after the first (its text appended after, its fields the newer), as
    writing them one at a time does."""
    ctx = store.get_or_create_context("apart")
    a, b = begin(store, ctx.id, "apart-a"), begin(store, ctx.id, "apart-b")
    batch = [
        (a, CheckpointDraft(first, chunks=1, response_id="old")),
        (a, CheckpointDraft("second", chunks=2, response_id="new")),
        (b, CheckpointDraft("other", chunks=1)),
    ]
    assert store.save_checkpoints(batch) == [True, True, True]
    got = store.get_checkpoint(a.checkpoint_id)
    assert (got.text, got.chunks, got.response_id) == (first + "second", 2, "new")
    assert store.get_checkpoint(b.checkpoint_id).text == "other"


def test_a_batch_binds_once_only_what_every_row_shares(tmp_path: Any) -> None:
    """SQLite's one-statement batch binds a column once when every row has the same value
    in it, and reads it from each row otherwise: whichever row first differs (the second,
    the last, one in between) and in whichever column (the epoch of a resumed reply, a
    usage, a response id, the metadata, tool calls, an error), each checkpoint is stored
    as writing its draft alone stores it."""
    base = CheckpointDraft("t", chunks=1, metadata={"model": "m"}, error=IN_PROGRESS)
    variants = {
        "usage": {"usage": Usage.of(1, 2)},
        "response_id": {"response_id": "resp"},
        "metadata": {"metadata": {"model": "other"}},
        "tool_calls": {"tool_calls": [{"index": 0, "id": "c", "name": "f", "arguments": ""}]},
        "error": {"error": "boom"},
        "none": {"response_id": None, "metadata": {}},
    }
    with rxcontext.open(tmp_path / "shared.db") as store:
        n = 0
        for name, change in variants.items():
            for where in (1, 2, 4):  # the second, one in between, the last of five
                n += 1
                ctx = store.get_or_create_context(f"resumed{n}")
                old = begin(store, ctx.id, f"old{n}", DEAD)
                store.claim_checkpoint(old.checkpoint_id, owner=worker_id())
                claimed = store.get_checkpoint(old.checkpoint_id)
                resumed = ReplyTicket(claimed.id, claimed.epoch, claimed.owner)
                assert resumed.epoch != 1
                pairs = []
                for i in range(5):
                    ctx = store.get_or_create_context(f"c{n}-{i}")
                    single = begin(store, ctx.id, f"s{n}-{i}")
                    batched = begin(store, ctx.id, f"b{n}-{i}")
                    draft = replace(base, **change) if i == where else base  # type: ignore[arg-type]
                    draft = replace(draft, chunks=i + 1, append_text=f"t{i} é")
                    assert store.save_checkpoints([(single, draft)]) == [True]
                    pairs.append((single, batched, draft))
                batch = [(b, d) for _, b, d in pairs]
                if name == "none":  # and a resumed reply's epoch, in the middle
                    batch[2] = (resumed, batch[2][1])
                assert store.save_checkpoints(batch) == [True] * 5
                for i, (single, batched, _) in enumerate(pairs):
                    got = store.get_checkpoint(
                        (resumed if name == "none" and i == 2 else batched).checkpoint_id
                    )
                    want = store.get_checkpoint(single.checkpoint_id)
                    assert (got.text, got.usage, got.response_id, got.error) == (
                        want.text,
                        want.usage,
                        want.response_id,
                        want.error,
                    )
                    assert (got.chunks, got.metadata, got.tool_calls) == (
                        want.chunks,
                        want.metadata,
                        want.tool_calls,
                    )


def test_deleting_a_context_fences_its_replies(store: Store):
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r")
    store.delete_context(ctx.id)
    assert not store.save_checkpoint(ticket, CheckpointDraft("x"))
    assert store.save_checkpoints([(ticket, CheckpointDraft("x"))]) in ([False], None)
    assert store.find_reply("r") is None


def test_sqlite_writes_a_batch_of_replies_in_a_few_statements(tmp_path: Any):
    """The periodic writes and the lease renewals of many replies are a few statements, not
    one per reply: each statement gives up the GIL and must take it back from the event
    loop's thread (up to the 5 ms switch interval when that thread is busy), so 5,000
    replies a row each took seconds, and lease renewals ran past ``lease_ttl``."""
    store = rxcontext.open(tmp_path / "s.db")
    try:
        tickets = []
        for i in range(40):
            ctx = store.get_or_create_context(f"c{i}")
            tickets.append(begin(store, ctx.id, f"r{i}"))
        statements: list[str] = []
        store._background().set_trace_callback(statements.append)  # type: ignore[attr-defined]
        batch = [(t, CheckpointDraft(f"text {i}", chunks=1)) for i, t in enumerate(tickets)]
        assert store.save_checkpoints(batch) == [True] * 40
        assert len(statements) <= 4, statements  # BEGIN, the updates, the parts, COMMIT
        statements.clear()
        assert store.renew_replies(tickets) == [True] * 40
        assert len(statements) <= 3, statements  # BEGIN, the renewals, COMMIT
        assert store.get_checkpoint(tickets[7].checkpoint_id).text == "text 7"
    finally:
        store.close()


def test_the_busy_reply_ids_are_the_active_replies_ids(store: Store):
    """What a request asks the store (which replies are being generated in its context:
    their records are left out of its history) is what ``active_replies`` lists."""
    ctx = store.get_or_create_context("c")
    other = store.get_or_create_context("o")
    store.add_record(ctx.id, P("q"))
    live = begin(store, ctx.id, "live")
    assert store.save_checkpoint(live, CheckpointDraft("x" * (BULK_CHARS + 5), chunks=1))
    begin(store, ctx.id, "dead", DEAD)  # an orphan: interrupted for everyone
    begin(store, ctx.id, "far", ELSEWHERE)  # another host: alive while its lease lasts
    stopped = begin(store, ctx.id, "stopped")
    assert store.save_checkpoint(stopped, CheckpointDraft(), state=ReplyState.INTERRUPTED)
    orphan = begin(store, ctx.id, "resumed", DEAD)
    store.claim_checkpoint(orphan.checkpoint_id, owner=worker_id())  # RESUMING, ours
    begin(store, other.id, "in-another-context")
    done = begin(store, ctx.id, "done")
    store.commit_reply(ctx.id, [R("a")], reply=done, end="reply")
    expected = {cp.reply_id for cp in store.active_replies(ctx.id)}
    assert expected == {"live", "far", "resumed"}
    assert store.busy_reply_ids(ctx.id) == expected  # type: ignore[attr-defined]


def test_a_request_reads_no_text_of_the_replies_streaming_beside_it(tmp_path: Any):
    """A request leaves out the records of replies still being generated in its context; it
    asked for those replies' whole rows, text included, so a long reply streaming in a
    context cost every other request there its text so far."""
    from rxcontext.history import request_history

    store = rxcontext.SQLiteStore(tmp_path / "busy.db")
    try:
        ctx = store.get_or_create_context("c")
        store.add_record(ctx.id, P("q"))
        first = begin(store, ctx.id, "first")
        store.commit_reply(ctx.id, [R("a")], reply=first, end="reply")  # a record with a reply id
        long = begin(store, ctx.id, "long")
        assert store.save_checkpoint(long, CheckpointDraft("x" * (3 * BULK_CHARS), chunks=1))
        begin(store, ctx.id, "mine")
        statements: list[str] = []
        store._db().set_trace_callback(statements.append)
        try:
            history = request_history(store, ctx.id, upto=None, reply_id="mine")
        finally:
            store._db().set_trace_callback(None)
        assert [r.content for r in history] == ["q", "a"]
        assert not [s for s in statements if "checkpoint_parts" in s], statements
    finally:
        store.close()


def test_sqlite_commits_a_reply_with_one_write_of_its_contexts_totals(tmp_path: Any):
    """A reply's commit adds its live records' tokens, its usage and its response id to the
    context's row in one statement, and a reply never interrupted loses its checkpoint's
    parts with its row (ON DELETE CASCADE): each statement gives up the GIL and takes it
    back, which from a busy event loop waits (5,000 concurrent streams spent ~70 such
    hand-overs a reply; docs/benchmarks.md). The totals are what the separate writes gave."""
    store = rxcontext.SQLiteStore(tmp_path / "commit.db")
    try:
        ctx = store.get_or_create_context("c")
        store.add_record(ctx.id, P("q"))
        ticket = begin(store, ctx.id, "r")
        assert store.save_checkpoint(ticket, CheckpointDraft("partial", chunks=1))
        parts = "SELECT count(*) FROM checkpoint_parts"
        assert store._db().execute(parts).fetchone() == (1,)
        usage = Usage(input_tokens=40, output_tokens=7, total_tokens=47, cached_tokens=3)
        statements: list[str] = []
        store._db().set_trace_callback(statements.append)
        try:
            stored = store.commit_reply(
                ctx.id,
                [R("the answer"), RecordDraft(RecordType.MODEL_RESP, "aside", live=False)],
                usage=usage,
                last_response_id="resp_1",
                reply=ticket,
                end="reply",
            )
        finally:
            store._db().set_trace_callback(None)
        contexts = [s for s in statements if s.startswith("UPDATE contexts")]
        assert len(contexts) == 2, contexts  # the lock and position, then the totals
        assert not [s for s in statements if "checkpoint_parts" in s], statements
        db = store._db()
        assert db.execute(parts).fetchone() == (0,)  # gone with their row
        assert db.execute("SELECT count(*) FROM checkpoints").fetchone() == (0,)
        row = db.execute(
            "SELECT live_tokens, input_tokens, output_tokens, total_tokens, cached_tokens,"
            " last_response_id FROM contexts WHERE id = ?",
            (ctx.id,),
        ).fetchone()
        prompt = store.records(ctx.id)[0]
        assert row == (prompt.est_tokens + stored[0].est_tokens, 40, 7, 47, 3, "resp_1")
        assert store.live_tokens(ctx.id) == row[0]
    finally:
        store.close()


def test_imported_records_add_their_live_tokens_and_usage_to_the_context(store: Store):
    """``import_records`` adds the live records' tokens and the usage given to the
    context's totals (on SQLite in the one statement a commit uses), dead records' not."""
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("before"))
    usage = Usage(input_tokens=11, output_tokens=5, total_tokens=16, cached_tokens=2)
    imported = store.import_records(
        ctx.id, [P("a question"), R("an answer"), R("dropped", live=False)], usage=usage
    )
    stats = store.context_stats(ctx.id)
    live = [r for r in store.records(ctx.id) if r.live]
    assert [r.content for r in live] == ["before", "a question", "an answer"]
    assert stats.live_tokens == store.live_tokens(ctx.id) == sum(r.est_tokens for r in live)
    assert imported[2].est_tokens > 0 and not imported[2].live
    assert (stats.usage.input_tokens, stats.usage.output_tokens) == (11, 5)
    assert (stats.usage.total_tokens, stats.usage.cached_tokens) == (16, 2)


def test_a_fork_never_carries_half_a_reply_that_ends_while_it_reads(store: Store) -> None:
    """A reply whose last round commits right after the fork reads the context (its tool
    round read, its answer not) is no longer busy when asked afterwards: the fork must then
    leave the reply out whole, not carry its tool round without the answer."""
    ctx = store.get_or_create_context("src").id
    store.add_record(ctx, P("q"))
    ticket = begin(store, ctx, "r")
    call = RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="f")
    output = RecordDraft(RecordType.TOOL_OUTPUT, "42", tool_call_id="c1", tool_name="f")
    store.commit_reply(ctx, [call], reply=ticket)
    store.commit_reply(ctx, [output], reply=ticket, end="round")
    real = store.export_context

    def export_then_the_reply_ends(context_id: str) -> Any:
        exported = real(context_id)
        store.commit_reply(ctx, [R("the answer")], reply=ticket, end="reply")
        return exported

    store.export_context = export_then_the_reply_ends  # type: ignore[method-assign]
    try:
        forked = fork_context(store, ctx, "fork", at=store.records(ctx)[-1].id)
    finally:
        store.export_context = real  # type: ignore[method-assign]
    kinds = [r.type for r in store.records(forked.id)]
    assert kinds in ([RecordType.PROMPT], [RecordType.PROMPT, RecordType.TOOL_CALL,
                     RecordType.TOOL_OUTPUT, RecordType.MODEL_RESP]), kinds  # fmt: skip


def test_a_clone_or_a_fork_leaves_out_the_records_of_a_reply_still_streaming(store: Store):
    """A reply streaming in the context (a tool round committed, its outputs to come) is not
    the clone's or the fork's: copied without its reply, its call would look dangling there
    and the next request would answer it "interrupted" though the tool ran."""
    ctx = store.get_or_create_context("src").id
    store.add_record(ctx, P("question"))
    store.add_record(ctx, P("another question"))
    ticket = begin(store, ctx, "streaming")
    call = RecordDraft(RecordType.TOOL_CALL, '{"x": 1}', tool_call_id="c1", tool_name="f")
    store.commit_reply(ctx, [call], reply=ticket)  # a round; the reply goes on
    clone = store.clone_context(ctx, "clone")
    last = store.records(ctx)[-1].id
    forked = fork_context(store, ctx, "fork", at=last)
    for copy in (clone, forked):
        records = store.records(copy.id)
        assert [r.content for r in records] == ["question", "another question"]
        assert store.live_tokens(copy.id) == sum(r.est_tokens for r in records if r.live)


@pytest.mark.parametrize("bad", [2**64, -(2**63) - 1])
def test_a_checkpoint_id_no_row_can_have_is_not_found(store: Store, bad: int) -> None:
    """An id beyond 64 bits (from a URL, say) names no checkpoint, on both stores: not an
    OverflowError from the SQLite driver."""
    for call in (
        lambda: store.get_checkpoint(bad),
        lambda: store.claim_checkpoint(bad, owner=worker_id()),
        lambda: store.discard_checkpoint(bad),
        lambda: store.keep_checkpoint(bad),
    ):
        with pytest.raises(CheckpointNotFound):
            call()


def test_a_bulk_periodic_write_encodes_its_rows_as_the_json_module_does(tmp_path: Any) -> None:
    """SQLite's periodic writes of many replies go into one statement per table as JSON,
    each row encoded as it is made (so a tick holds no row tuples: docs/benchmarks.md, "a
    tick's objects"): the JSON is what ``json`` makes of the rows whole, the parts' text
    is beside it in UTF-8 where their spans say, and the text stored is what was sent,
    quotes, backslashes, control characters and non-ASCII included."""
    import json

    from rxcontext.store import sqlite_replies

    texts = ["plain", 'a "quote" \\ back', "tab\tnew\nline\x01", "café ☕ 🎉", ""]
    with rxcontext.open(tmp_path / "bulk.db") as store:
        writes = []
        for i, text in enumerate(texts):
            ctx = store.get_or_create_context(f"c{i}")
            cp = store.begin_reply(ctx.id, f"r{i}", owner="me")
            draft = CheckpointDraft(
                append_text=text,
                append_thinking="thought é" if i % 2 else "",
                usage=Usage.of(3, i) if i % 2 else None,
                chunks=i,
                response_id=f"resp-{i}" if i else None,
                metadata={"model": "m-ü", "n": 1.5} if i else {},
                tool_calls=[{"id": "t", "name": "w", "arguments": '{"c": "é"}'}] if i == 3 else (),
            )
            writes.append((ReplyTicket(cp.id, cp.epoch), draft))
        bulk = sqlite_replies._bulk_payloads(writes)
        assert bulk is not None
        updates, binds, parts, rest = bulk
        dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        assert updates == dump(json.loads(updates)) and len(json.loads(updates)) == len(texts)
        assert parts is not None and rest == []
        spans, blob = parts
        assert spans == dump(json.loads(spans))
        assert len(json.loads(spans)) == len(texts) - 1  # the last has no text
        # The parts' text and thinking, one after another in UTF-8, where the spans say.
        got = []
        for span in json.loads(spans).values():
            for at in span if isinstance(span, list) else [span]:
                start, size = at >> sqlite_replies._AT, at & ((1 << sqlite_replies._AT) - 1)
                got.append(blob[start : start + size].decode())
        want = [p for t, d in zip(texts, writes, strict=True) for p in (t, d[1].append_thinking)]
        assert "".join(got) == "".join(want) and len(blob) == len("".join(want).encode())
        # Only the epoch and the error are the same in every row: bound once; the first
        # row's values are bound, and the first row (every row alike it) is its chunk count.
        calls, usage, error, response_id, metadata, epoch = (
            binds[k : k + 2] for k in range(0, 12, 2)
        )
        assert (calls, usage, error, response_id, metadata) == (
            (False, "[]"),
            (False, None),
            (True, None),
            (False, None),
            (False, None),
        )
        assert epoch == (True, cp.epoch)
        rows = json.loads(updates)
        assert rows[str(writes[0][0].checkpoint_id)] == 0
        assert all(isinstance(r, list) for r in list(rows.values())[1:])
        assert store.save_checkpoints(writes) == [True] * len(texts)
        assert store.save_checkpoints(writes) == [True] * len(texts)  # appended again
        for (ticket, draft), text in zip(writes, texts, strict=True):
            cp = store.get_checkpoint(ticket.checkpoint_id)
            assert cp.text == text * 2
            assert cp.thinking == draft.append_thinking * 2
            assert cp.usage == draft.usage
            assert cp.chunks == draft.chunks
            assert cp.response_id == draft.response_id
            assert dict(cp.metadata) == dict(draft.metadata)


@pytest.mark.parametrize(
    "usage",
    [
        Usage.of(40, 20),
        Usage(1, 2, 3, 4, 5, 6, 7),
        Usage(2**63 - 1, 0, 2**63 - 1),
        Usage(True, 2),  # type: ignore[arg-type]  # not every count an int: the encoder's
        Usage(1.5, 2),  # type: ignore[arg-type]
    ],
)
def test_a_checkpoint_usage_is_the_json_of_its_counts(usage: Usage) -> None:
    """SQLite writes a checkpoint's usage from a template where every count is an int: the
    same text as the JSON encoder makes of ``usage.to_dict()``, every field in order."""
    import json

    from rxcontext.store import sqlite_replies

    dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    assert sqlite_replies._usage_json(usage) == dump(usage.to_dict())
