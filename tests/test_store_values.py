"""What both stores make of the values callers hand them: times with a UTC offset (an
import of contextwindow's Go export, which writes local times) are kept as the same
instants in UTC, and usage totals that would pass what a database integer holds stay at
it, every reply stored. Every test runs on SQLite and PostgreSQL (but the one about
SQLite's own clock) and expects the same result from both."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, Usage
from rxcontext.interop import import_context
from rxcontext.providers import ScriptedModel
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id

BIG = 2**63 - 1  # the largest count a database integer (SQLite INTEGER, PostgreSQL bigint) holds

NEW_YORK = timezone(timedelta(hours=-5))

TRIP = {
    "context": {"name": "trip"},
    "records": [
        {"source": 0, "content": "first", "live": True, "timestamp": "2025-01-01T10:00:00+00:00"},
        # the latest: 14:30 UTC, written with New York's offset
        {"source": 1, "content": "second", "live": True, "timestamp": "2025-01-01T09:30:00-05:00"},
        # Go's time.Time.String(): 11:00:00.5 UTC
        {"source": 0, "content": "third", "live": True,
         "timestamp": "2025-01-01 12:00:00.5 +0100 CET"},
    ],
}  # fmt: skip
TRIP_UTC = [
    "2025-01-01T10:00:00+00:00",
    "2025-01-01T14:30:00+00:00",
    "2025-01-01T11:00:00.500000+00:00",
]


def test_times_with_offsets_import_as_utc_and_the_latest_is_the_last_activity(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    ctx = import_context(store, TRIP)
    assert store.context_stats(ctx.id).last_activity.isoformat() == "2025-01-01T14:30:00+00:00"
    assert [r.timestamp.isoformat() for r in store.records(ctx.id)] == TRIP_UTC
    assert [r["timestamp"] for r in store.export_context(ctx.id)["records"]] == TRIP_UTC


def test_a_record_given_a_time_gets_it_in_utc_a_naive_one_taken_as_utc(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    ctx = store.create_context("given")
    noon_ny = datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=NEW_YORK)  # 17:00:00.25 UTC
    naive = datetime(2025, 3, 1, 16, 0)  # taken as 16:00 UTC (RecordDraft's rule)
    added = [
        store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "a", timestamp=noon_ny)),
        store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "b", timestamp=naive)),
        *store.commit_reply(
            ctx.id,
            [RecordDraft(RecordType.MODEL_RESP, "c", timestamp=noon_ny - timedelta(hours=2))],
        ),
        *store.import_records(
            ctx.id, [RecordDraft(RecordType.PROMPT, "d", timestamp=noon_ny + timedelta(hours=1))]
        ),
    ]
    want = [
        "2025-03-01T17:00:00.250000+00:00",
        "2025-03-01T16:00:00+00:00",
        "2025-03-01T15:00:00.250000+00:00",
        "2025-03-01T18:00:00.250000+00:00",
    ]
    assert [r.timestamp.isoformat() for r in added] == want  # as written
    assert [r.timestamp.isoformat() for r in store.records(ctx.id)] == want  # as read back
    last = store.context_stats(ctx.id).last_activity
    assert last.isoformat() == "2025-03-01T18:00:00.250000+00:00"


def test_a_sqlite_clock_with_an_offset_writes_utc_and_rows_stored_with_offsets_still_read(
    tmp_path: Any,
) -> None:
    # SQLite's times come from its clock (PostgreSQL's from the server, always UTC).
    at = datetime(2025, 5, 5, 8, 0, tzinfo=timezone(timedelta(hours=2)))  # 06:00 UTC
    store = rxcontext.SQLiteStore(str(tmp_path / "c.db"), clock=lambda: at)
    try:
        ctx = store.create_context("clocked")
        rec = store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "x"))
        assert rec.timestamp.isoformat() == "2025-05-05T06:00:00+00:00"
        assert store.get_context(ctx.id).created_at.isoformat() == "2025-05-05T06:00:00+00:00"
        begun = store.begin_reply(ctx.id, "r1", owner=worker_id())
        assert begun.created_at.isoformat() == "2025-05-05T06:00:00+00:00"
        stored = store._db().execute("SELECT ts FROM records").fetchall()
        assert stored == [("2025-05-05T06:00:00.000000+00:00",)]
        # A row an earlier version stored with its offset still reads, as the same instant.
        store._db().execute("UPDATE records SET ts = '2025-05-05T09:00:00.000000+03:00'")
        (old,) = store.records(ctx.id)
        assert old.timestamp.isoformat() == "2025-05-05T06:00:00+00:00"
    finally:
        store.close()


def _cut(store: Any, context_id: str, usage: Usage) -> int:
    """A reply begun and interrupted, billed ``usage``; its checkpoint's id."""
    begun = store.begin_reply(context_id, f"cut-{context_id}", owner=worker_id())
    ticket = ReplyTicket(begun.id, begun.epoch)
    assert store.save_checkpoint(
        ticket, CheckpointDraft("kept text", usage=usage), state=rxcontext.ReplyState.INTERRUPTED
    )
    return int(begun.id)


def test_usage_totals_past_the_largest_integer_hold_at_it_and_every_reply_is_stored(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    ctx = store.create_context("big")
    huge = Usage(2**62 + 1, 1, 2**62 + 2)
    for i in range(2):
        store.commit_reply(ctx.id, [RecordDraft(RecordType.MODEL_RESP, f"r{i}")], usage=huge)
    store.import_records(ctx.id, [RecordDraft(RecordType.PROMPT, "p")], usage=huge)
    store.keep_checkpoint(_cut(store, ctx.id, huge))
    stats = store.context_stats(ctx.id)
    assert [r.content for r in store.records(ctx.id)] == ["r0", "r1", "p", "kept text"]
    assert stats.usage == Usage(BIG, 4, BIG)
    assert type(stats.usage.input_tokens) is int
    assert store.export_context(ctx.id)["context"]["usage"]["input_tokens"] == BIG


def test_a_usage_count_no_database_integer_holds_adds_its_bound(
    make_store: Callable[..., Any],
) -> None:
    # Counts a provider never really sends: one past the largest integer, and a negative one
    # (each stored as it came in the reply's usage; the totals only ever grow, up to BIG).
    store = make_store()
    ctx = store.create_context("absurd")
    store.commit_reply(ctx.id, [RecordDraft(RecordType.MODEL_RESP, "a")], usage=Usage(5, 7, 12))
    store.commit_reply(
        ctx.id, [RecordDraft(RecordType.MODEL_RESP, "b")], usage=Usage(2**63, -3, 2**64)
    )
    assert [r.content for r in store.records(ctx.id)] == ["a", "b"]
    assert store.context_stats(ctx.id).usage == Usage(BIG, 7, BIG)
    imported = store.import_context(
        "absurd-too", [], usage=Usage(2**70, -1, 2**63, cached_tokens=4)
    )
    assert store.context_stats(imported.id).usage == Usage(BIG, 0, BIG, cached_tokens=4)


def test_a_reply_whose_usage_overflows_the_context_totals_is_stored(
    make_store: Callable[..., Any],
) -> None:
    def done() -> Chunk:
        return Chunk(ChunkKind.DONE, finish_reason="stop", usage=Usage(2**62 + 1, 1, 2**62 + 2))

    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "one"), done()], [Chunk(ChunkKind.TEXT, "two"), done()]]
    )
    cw = ContextWindow(make_store(), model, "chat", retry=None)
    for question in ("1?", "2?"):
        cw.add_prompt(question)
        cw.call()
    assert [r.content for r in cw.records()] == ["1?", "one", "2?", "two"]
    assert cw.checkpoints() == []
    assert cw.records()[3].metadata["usage"]["input_tokens"] == 2**62 + 1  # as it came
    assert cw.store.context_stats(cw.context_id).usage.input_tokens == BIG


@pytest.mark.parametrize("count", [2**63, -1])
def test_usage_kept_in_a_checkpoint_reads_back_as_given(
    make_store: Callable[..., Any], count: int
) -> None:
    # The checkpoint (and a record's metadata) keep a reply's usage as it came: only the
    # context's totals are held to what a database integer holds.
    store = make_store()
    ctx = store.create_context("cp")
    cp = store.get_checkpoint(_cut(store, ctx.id, Usage(count, 1, 2)))
    assert cp.usage == Usage(count, 1, 2)
