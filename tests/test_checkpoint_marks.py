"""Checkpoints take only the text past what they hold (O(new text)) and stay exact: the
builder's suffixes, a write the database refuses, thinking blocks and tool calls held
compactly, and the UTF-8 checks that never copy a long reply whole."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex.testing import TestScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext import operators as rxops
from rxcontext.chunks import _COALESCE, ReplyBuilder
from rxcontext.persist import HELD_KEY
from rxcontext.providers import ScriptedModel
from rxcontext.store._sqlite_rows import storable
from rxcontext.tokens import estimate_tokens, utf8_size

_step = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=5)),
    st.tuples(st.just("thinking"), st.text(max_size=5)),
    st.tuples(st.just("build"), st.just("")),
)


@given(st.lists(_step, max_size=3 * _COALESCE), st.data())
def test_text_from_is_the_suffix_at_any_point(steps: list[tuple[str, str]], data) -> None:
    builder = ReplyBuilder()
    text, thinking = "", ""
    for kind, delta in steps:
        if kind == "text":
            builder.add(Chunk(ChunkKind.TEXT, delta))
            text += delta
        elif kind == "thinking":
            builder.add(Chunk(ChunkKind.THINKING, delta))
            thinking += delta
        else:
            builder.build()  # joins the parts in place
        start = data.draw(st.integers(0, len(text)))
        assert builder.text_from(start) == (text[start:], len(text))
        limit = data.draw(st.integers(0, 12))  # a bounded part (a long backlog's)
        assert builder.text_from(start, limit) == (text[start : start + limit], len(text))
        start = data.draw(st.integers(0, len(thinking)))
        assert builder.thinking_from(start) == (thinking[start:], len(thinking))
        limit = data.draw(st.integers(0, 12))
        assert builder.thinking_from(start, limit) == (
            thinking[start : start + limit],
            len(thinking),
        )


_tick_step = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=3)),
    st.tuples(st.just("thinking"), st.text(max_size=3)),
    st.tuples(st.sampled_from(["build", "read", "let_go", "rewind"]), st.just("")),
)


@given(st.lists(_tick_step, max_size=4 * _COALESCE), st.data())
def test_reads_that_follow_each_other_take_what_came_between(
    steps: list[tuple[str, str]], data
) -> None:
    """A checkpoint's reads, each from where the one before ended (as periodic writes go),
    take exactly the text and thinking added in between, whatever happened to the parts
    meanwhile: blocks joined every ``_COALESCE`` deltas, a build's join in place, a
    let-go of what a checkpoint holds, a rewind; and a read from elsewhere (a bounded
    part, a write that did not land) starts over."""
    builder = ReplyBuilder()
    text, thinking = "", ""
    marks = [0, 0]
    for kind, delta in steps:
        if kind == "text":
            builder.add(Chunk(ChunkKind.TEXT, delta))
            text += delta
        elif kind == "thinking":
            builder.add(Chunk(ChunkKind.THINKING, delta))
            thinking += delta
        elif kind == "build":
            builder.build()
        elif kind == "let_go":
            builder.let_go_text(min(marks[0], len(text)))
            builder.let_go_thinking(min(marks[1], len(thinking)))
        elif kind == "rewind":  # (from the reply's start; never back past a let-go)
            keep = data.draw(st.integers(builder.text_gone, len(text)))
            builder.add(Chunk(ChunkKind.REWIND, index=keep))
            text = text[:keep]
            marks[0] = min(marks[0], keep)
        elif kind == "read":
            for i, (whole, read) in enumerate(
                ((text, builder.text_from), (thinking, builder.thinking_from))
            ):
                start = marks[i]
                if data.draw(st.booleans()):  # now and then, from elsewhere
                    gone = builder.text_gone if i == 0 else builder.thinking_gone
                    start = data.draw(st.integers(gone, len(whole)))
                limit = data.draw(st.one_of(st.none(), st.integers(0, 6)))
                got = read(start, limit)
                want = whole[start:] if limit is None else whole[start : start + limit]
                assert got == (want, len(whole))
                marks[i] = start + len(want)


@pytest.mark.parametrize("between", ["build", "coalesce", "let_go", "rewind"])
def test_a_read_after_the_parts_were_reshaped_takes_what_came_between(between: str) -> None:
    """The cases of the test above that a few examples may miss: after a read, the parts
    are joined (a build, a block of ``_COALESCE`` deltas), let go of, or rewound, then
    more deltas come; the next read from where the last ended takes exactly those."""
    builder = ReplyBuilder()
    for delta in ["a", "b", "c"]:
        builder.add(Chunk(ChunkKind.TEXT, delta))
        builder.add(Chunk(ChunkKind.THINKING, delta))
    assert builder.text_from(0) == ("abc", 3) and builder.thinking_from(0) == ("abc", 3)
    text, thinking, mark = "abc", "abc", 3
    if between == "build":
        builder.build()
    elif between == "coalesce":
        for i in range(_COALESCE):
            builder.add(Chunk(ChunkKind.TEXT, str(i % 10)))
            builder.add(Chunk(ChunkKind.THINKING, str(i % 10)))
            text += str(i % 10)
            thinking += str(i % 10)
    elif between == "let_go":
        builder.let_go_text(2)
        builder.let_go_thinking(2)
    else:
        builder.add(Chunk(ChunkKind.REWIND, index=2, metadata={"thinking": 2}))
        text, thinking, mark = "ab", "ab", 2
    for delta in ["d", "e", "f", "g"]:
        builder.add(Chunk(ChunkKind.TEXT, delta))
        builder.add(Chunk(ChunkKind.THINKING, delta))
        text += delta
        thinking += delta
    assert builder.text_from(mark) == (text[mark:], len(text))
    assert builder.thinking_from(mark) == (thinking[mark:], len(thinking))


def test_one_thinking_block_shares_the_thinking_text() -> None:
    builder = ReplyBuilder()
    for i in range(3 * _COALESCE + 1):
        builder.add(Chunk(ChunkKind.THINKING, str(i % 7)))
    builder.add(Chunk(ChunkKind.THINKING, "", metadata={"signature": "sig"}))
    # The block holds where its text is in the thinking, not a second copy of the text.
    assert builder._thinking_blocks[0].spans == [0]  # from 0 to the end: no copy of it
    reply = builder.build()
    (block,) = reply.metadata["thinking_blocks"]
    assert block["thinking"] == reply.thinking == "".join(str(i % 7) for i in range(769))
    assert block["thinking"] is reply.thinking  # one copy of a long reasoning


def test_two_thinking_blocks_keep_their_own_text() -> None:
    builder = ReplyBuilder()
    for index, text in ((0, "ab"), (1, "cd"), (0, "e")):
        builder.add(Chunk(ChunkKind.THINKING, text, index, metadata={"signature": f"s{index}"}))
    reply = builder.build()
    assert reply.thinking == "abcde"
    assert [b["thinking"] for b in reply.metadata["thinking_blocks"]] == ["abe", "cd"]
    assert [builder._thinking_blocks[i].spans for i in (0, 1)] == [[0, 2, 4], [2, 4]]
    assert builder.thinking_blocks() == list(reply.metadata["thinking_blocks"])


def test_a_rewound_thinking_keeps_block_spans_in_step() -> None:
    builder = ReplyBuilder()
    builder.add(Chunk(ChunkKind.THINKING, "abcdef", metadata={"signature": "old"}))
    builder.add(Chunk(ChunkKind.REWIND, index=0, metadata={"thinking": 2}))
    builder.add(Chunk(ChunkKind.THINKING, "XY", metadata={"signature": "new"}))
    reply = builder.build()
    assert reply.thinking == "abXY"
    assert [b["thinking"] for b in reply.metadata["thinking_blocks"]] == ["XY"]


def test_a_long_tool_call_is_held_in_blocks() -> None:
    builder = ReplyBuilder()
    pieces = [f'"{i}",' for i in range(4 * _COALESCE)]
    builder.add(Chunk(ChunkKind.TOOL_CALL, "[", 0, "call_1", "f"))
    for piece in pieces:
        builder.add(Chunk(ChunkKind.TOOL_CALL, piece, 0))
    builder.add(Chunk(ChunkKind.TOOL_CALL, '"end"]', 0))
    assert len(builder._calls[0].parts) < 10
    (call,) = builder.build().tool_calls
    assert call.raw == "[" + "".join(pieces) + '"end"]'
    assert builder.tool_fragments()[0]["arguments"] == call.raw


def test_a_periodic_write_the_database_refuses_is_written_at_the_next_tick(tmp_path) -> None:
    path = tmp_path / "busy.db"
    ts = TestScheduler()
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, c) for c in "abcdef"] + [Chunk(ChunkKind.DONE)]])
    with rxcontext.open(path) as store:
        cw = ContextWindow(store, model, "p", checkpoint_every=1.0, scheduler=ts)
        cw.add_prompt("go")
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        seen: list[str] = []

        def step(chunk: Chunk) -> None:
            if chunk.text == "b":
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                ts.advance_by(1.0)  # the tick cannot write: "a" stays past the mark
                seen.append(cw.active_replies()[0].text)
                other.execute("ROLLBACK")
            elif chunk.text in ("d", "e"):
                ts.advance_by(1.0)
                seen.append(cw.active_replies()[0].text)

        cw.call(rxops.middleware(on_chunk=step))
        other.close()
        # A hook runs before its chunk is folded in: the tick at "d" holds "abc".
        assert seen == ["", "abc", "abcd"]
        assert [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP] == ["abcdef"]


def test_an_interrupt_after_checkpoints_stores_exactly_what_was_delivered() -> None:
    ts = TestScheduler()
    deltas = [f"{i}é" for i in range(3 * _COALESCE)]
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, d) for d in deltas] + [RuntimeError("cut")]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "p", checkpoint_every=1.0, scheduler=ts)
    cw.add_prompt("go")
    count = 0

    def step(chunk: Chunk) -> None:
        nonlocal count
        count += 1
        if count % 100 == 0:
            ts.advance_by(1.0)

    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call(rxops.middleware(on_chunk=step))
    assert cut.value.checkpoint.text == "".join(deltas)
    (parts,) = (
        cw.store._db()
        .execute(
            "SELECT COUNT(*) FROM checkpoint_parts WHERE checkpoint_id = ?",
            (cut.value.checkpoint.id,),
        )
        .fetchone()
    )
    assert parts == 1 + len(deltas) // 100  # one part per tick, then the rest


@pytest.mark.parametrize(
    "text",
    ["", "ascii", "café — 日本語", "x" * 70_000 + "é" * 70_000 + "😀" * 10, "a\ud83d" * 40_000],
)
def test_utf8_size_counts_as_encoding_does(text: str) -> None:
    assert utf8_size(text) == len(text.encode("utf-8", "surrogatepass"))
    assert estimate_tokens(text) == (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


def test_storable_checks_long_text_in_slices_and_still_repairs_surrogates() -> None:
    long = "é" * 100_000
    assert storable(long) is long
    split = "x" * ((1 << 16) - 1) + "\ud83d\ude00" + "y"  # a pair across two slices
    assert storable(split) == "x" * ((1 << 16) - 1) + "😀" + "y"
    assert storable("a\ud800b") == "a\ufffdb"


def test_replies_one_after_another_reuse_the_checkpointer_thread(monkeypatch) -> None:
    from rxcontext import checkpointer

    monkeypatch.setattr(checkpointer, "LINGER", 600.0)
    done = Chunk(ChunkKind.DONE)
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "a"), done], [Chunk(ChunkKind.TEXT, "b"), done]])
    with rxcontext.open(":memory:") as store:
        cw = ContextWindow(store, model, "p", checkpoint_every=1.0)
        cw.add_prompt("go")
        assert cw.call().text == "a"
        timer = checkpointer.checkpointer_for(store, 1.0)
        first = timer._thread
        assert first is not None and first.is_alive()  # idle, waiting for the next reply
        cw.add_prompt("again")
        assert cw.call().text == "b"
        assert timer._thread is first


def test_a_long_checkpoint_write_is_stored_in_small_parts_and_read_back_exactly() -> None:
    from rxcontext.records import ReplyState
    from rxcontext.store.base import CheckpointDraft, ReplyTicket
    from rxcontext.store.sqlite_replies import PART_CHARS

    # A split surrogate pair right at the first cut: the cut moves so storable still joins it.
    later = "é" * (PART_CHARS - 1) + "\ud83d\ude00" + "x" * (PART_CHARS + 5)
    thinking = "t" * (PART_CHARS // 2)
    with rxcontext.open(":memory:") as store:
        ctx = store.get_or_create_context("long")
        begun = store.begin_reply(ctx.id, "r-long", owner="me")
        ticket = ReplyTicket(begun.id, begun.epoch)
        assert store.save_checkpoint(ticket, CheckpointDraft("0123456789"))
        assert store.save_checkpoint(
            ticket,
            CheckpointDraft(later, append_thinking=thinking),
            state=ReplyState.INTERRUPTED,
        )
        sizes = store._db().execute(
            "SELECT length(text), length(thinking) FROM checkpoint_parts ORDER BY seq"
        )
        assert [tuple(r) for r in sizes] == [
            (10, 0),
            (PART_CHARS - 1, PART_CHARS // 2),
            (PART_CHARS - 1, 0),  # the pair, joined: one character
            (7, 0),
        ]
        cp = store.get_checkpoint(begun.id)
        assert cp.text == "0123456789" + storable(later)
        assert "😀" in cp.text and cp.thinking == thinking


def test_free_memory_is_handed_back_only_after_a_long_reply() -> None:
    import platform

    from rxcontext._memory import TRIM_AT, let_go

    assert not let_go(TRIM_AT - 1)  # a short reply: left to the allocator, no call
    assert let_go(TRIM_AT) is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("kind", [ChunkKind.TEXT, ChunkKind.THINKING])
def test_a_tick_between_the_halves_of_a_surrogate_pair_keeps_the_character(
    kind: ChunkKind,
) -> None:
    """A provider may cut an escaped emoji between two deltas (its high half, then its low
    half). A periodic checkpoint that lands between them must not store the high half alone
    (the store can only replace it, and the character would be lost from the checkpoint and
    from what a resume continues): it is written with its other half, at the next write."""
    ts = TestScheduler()
    deltas = ["A", "\ud83d", "\ude00", "B"]
    model = ScriptedModel([[Chunk(kind, d) for d in deltas] + [RuntimeError("cut")]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "s", checkpoint_every=1.0, scheduler=ts)
    cw.add_prompt("go")
    count = 0

    def step(chunk: Chunk) -> None:
        nonlocal count
        count += 1
        if count == 3:  # the high half delivered, the low half's hook running: a tick
            ts.advance_by(1.0)

    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call(rxops.middleware(on_chunk=step))
    stored = cut.value.checkpoint.text if kind is ChunkKind.TEXT else cut.value.checkpoint.thinking
    assert stored == "A\U0001f600B"


@pytest.mark.parametrize("kind", [ChunkKind.TEXT, ChunkKind.THINKING])
def test_a_cut_between_the_halves_of_a_surrogate_pair_keeps_the_half_beside_the_text(
    kind: ChunkKind,
) -> None:
    """A reply cut right after a pair's high half: the checkpoint's text ends before it and
    the half is kept beside it (``HELD_KEY``), not replaced by U+FFFD (a native resume's
    stream goes on with the low half: tests/test_native_resume.py). A continuation goes on
    from the stored text: the half alone was no character."""
    model = ScriptedModel(
        [[Chunk(kind, "A"), Chunk(kind, "\ud83d"), RuntimeError("cut")], [Chunk(kind, "B")]]
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "s", retry=None)
    cw.add_prompt("go")
    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call()
    cp = cut.value.checkpoint
    field = "text" if kind is ChunkKind.TEXT else "thinking"
    assert (cp.text, cp.thinking) == (("A", "") if field == "text" else ("", "A"))
    assert cp.metadata[HELD_KEY] == {field: 0xD83D}
    reply = cw.resume_call(cp.id)
    assert getattr(reply, field) == "AB"


@pytest.mark.parametrize("encoding", [None, "UTF-16le", "UTF-16be"])
def test_ticks_of_many_replies_store_exactly_what_each_delivered(tmp_path, encoding) -> None:
    """Periodic ticks over several replies (SQLite writes them in one statement per table)
    store, after each tick, exactly the text and thinking each reply delivered: non-ASCII,
    emoji, and a surrogate pair cut between two deltas on either side of a tick (its high
    half waits for the next tick, in the text and in the thinking). Also in a database file
    its user made in UTF-16 before rxcontext opened it (SQLite reads text in the file's
    own encoding)."""
    import sqlite3

    from reactivex.testing import TestScheduler

    from rxcontext.checkpointer import Checkpointer
    from rxcontext.persist import ReplyPersister

    T, K = ChunkKind.TEXT, ChunkKind.THINKING
    ticks = [
        [[(T, "café "), (T, "\ud83d")], [(K, "naïve \ud83e")], [(T, "日本"), (K, "x")], []],
        [[(T, "\ude00 fin")], [(K, "\udd14 ok"), (T, "é")], [(T, "\U0001f600")], [(T, "a")]],
        [[(T, "\ud83d"), (T, "\ude01")], [(T, "\ud83d")], [(K, "ü")], [(T, "b")]],
        [[], [(T, "\ude02!")], [], []],
    ]
    if encoding is not None:
        made = sqlite3.connect(tmp_path / "ticks.db")
        made.execute(f"PRAGMA encoding = '{encoding}'")
        made.execute("CREATE TABLE t (x)")  # the encoding is the file's from here on
        made.execute("DROP TABLE t")
        made.close()
    with rxcontext.open(tmp_path / "ticks.db") as store:
        if encoding is not None:
            with store._read() as db:
                assert db.execute("PRAGMA encoding").fetchone()[0] == encoding
        timer = Checkpointer(store, 1.0, scheduler=TestScheduler())
        replies = []
        for i in range(len(ticks[0])):
            ctx = store.get_or_create_context(f"c{i}")
            p = ReplyPersister(store, ctx.id, checkpoint_every=1.0)
            p.begin()
            timer.register(p)
            replies.append(p)
        sent = [["", ""] for _ in replies]
        for deltas in ticks:
            for i, (p, chunks) in enumerate(zip(replies, deltas, strict=True)):
                for kind, delta in chunks:
                    p.add(Chunk(kind, delta))
                    sent[i][kind is K] += delta
            timer.tick()
            for p, (text, thinking) in zip(replies, sent, strict=True):
                assert p.ticket is not None
                cp = store.get_checkpoint(p.ticket.checkpoint_id)
                # A high half at the end waits for its low half (the next tick's).
                want = [
                    s[:-1] if s and "\ud800" <= s[-1] <= "\udbff" else s for s in (text, thinking)
                ]
                joined = [s.encode("utf-16", "surrogatepass").decode("utf-16") for s in want]
                assert [cp.text, cp.thinking] == joined
        assert store.get_checkpoint(replies[1].ticket.checkpoint_id).text == "é\U0001f602!"


def test_a_tick_s_drafts_are_the_drafts_the_constructor_makes() -> None:
    """The persister makes its drafts through ``new_draft`` (a shell of the same slots made
    a CheckpointDraft): the same value, type and frozenness as ``CheckpointDraft(...)``."""
    import dataclasses

    from rxcontext import Usage
    from rxcontext.store.base import CheckpointDraft, new_draft

    values = ("té", "x", ({"id": "c"},), Usage.of(1, 2), "in progress", 3, "r", {"m": 1})
    made = new_draft(*values)
    assert made == CheckpointDraft(*values) and type(made) is CheckpointDraft
    assert repr(made) == repr(CheckpointDraft(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.chunks = 4  # type: ignore[misc]
    assert dataclasses.replace(made, chunks=4) == CheckpointDraft(*values[:5], 4, *values[6:])


def test_a_store_cannot_change_the_metadata_a_tick_shares_between_replies(tmp_path) -> None:
    """Replies of one model hand their periodic writes the same metadata object (its JSON is
    made once a tick): it is read-only (``CheckpointDraft.metadata`` is a Mapping), so a
    user's store that changes it in place fails loudly instead of writing its change into
    every other reply's checkpoint; and ``json.dumps`` still encodes it."""
    import json

    from reactivex.testing import TestScheduler

    from rxcontext.checkpointer import Checkpointer
    from rxcontext.persist import ReplyPersister
    from rxcontext.store.sqlite import SQLiteStore

    refused: list[str] = []

    class Tagging(SQLiteStore):
        def save_checkpoints(self, writes):  # type: ignore[no-untyped-def]
            for ticket, draft in writes:
                assert json.loads(json.dumps(draft.metadata)) == dict(draft.metadata)
                try:
                    draft.metadata["tagged"] = ticket.checkpoint_id  # type: ignore[index]
                except TypeError as exc:
                    refused.append(str(exc))
            return super().save_checkpoints(writes)

    with Tagging(tmp_path / "tag.db") as store:
        timer = Checkpointer(store, 1.0, scheduler=TestScheduler())
        replies = []
        for i, model in enumerate(["openai:gpt-x", "openai:gpt-x", None, None]):
            ctx = store.get_or_create_context(f"c{i}")
            p = ReplyPersister(store, ctx.id, checkpoint_every=1.0, model_name=model)
            p.begin()
            timer.register(p)
            replies.append(p)
        for tick in range(2):
            for p in replies:
                p.add(Chunk(ChunkKind.TEXT, f"t{tick} "))
            timer.tick()
        assert len(refused) == 2 * len(replies)
        for p in replies:
            assert p.ticket is not None
            cp = store.get_checkpoint(p.ticket.checkpoint_id)
            assert cp.text == "t0 t1 " and "tagged" not in cp.metadata
