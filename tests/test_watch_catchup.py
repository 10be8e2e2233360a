"""A watcher that was reading the store switches to a live log that appears later (a
fan-out that was down, a log written after a gap): it skips what it already showed by
text offset, splits a chunk that straddles that offset, and shows the rest exactly once.
Pulled chunk by chunk with the real store and the memory fan-out."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from watching import text_of

from rxcontext import Chunk, ChunkKind, RecordType
from rxcontext.fanout import MemoryFanout
from rxcontext.fanout.watcher import watch_chunks
from rxcontext.store.base import CheckpointDraft, RecordDraft, ReplyTicket

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
H = lambda text: Chunk(ChunkKind.THINKING, text)  # noqa: E731


def test_from_the_store_to_the_live_log_without_a_repeat(make_store: Callable[..., Any]) -> None:
    store = make_store()
    ctx = store.get_or_create_context("catch-up").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "Go."))
    row = store.begin_reply(ctx, "r-up", owner="worker-a")
    ticket = ReplyTicket(row.id, row.epoch)
    # What the owner delivered so far; its checkpoint has part of it: "Hello w" + "hm".
    delivered = [
        H("hmm"),
        T("Hello "),
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call-1", "look"),
        T("wor"),
        Chunk(ChunkKind.TOOL_CALL, '{"q": 1}', 0),
        T("ld"),
    ]
    draft = CheckpointDraft(append_text="Hello w", append_thinking="hm", chunks=3)
    store.save_checkpoint(ticket, draft)

    fanout = MemoryFanout()  # no log for this reply yet: the watcher reads the store
    cancelled = threading.Event()
    watch = watch_chunks(store, fanout, "r-up", cancelled, poll=0.01, wait=0.05)
    shown = [next(watch), next(watch)]
    assert shown == [H("hm"), T("Hello w")]

    channel = fanout.open_channel("r-up", row.epoch)  # the live log appears, from its start
    for chunk in delivered:
        channel.chunk(chunk)
    live = [next(watch) for _ in range(5)]
    assert live == [
        H("m"),  # the rest of the thinking
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call-1", "look"),  # never shown: shown now
        T("or"),  # "wor" straddles what was shown: only its tail
        Chunk(ChunkKind.TOOL_CALL, '{"q": 1}', 0),
        T("ld"),
    ]

    # Committed as an owner commits it: the thinking in metadata["thinking"] (a watch ends
    # on the record's thinking too, none if it has none).
    reply = RecordDraft(RecordType.MODEL_RESP, "Hello world", metadata={"thinking": "hmm"})
    store.commit_reply(ctx, [reply], reply=ticket, end="reply")
    channel.end("completed")
    rest = list(watch)
    assert [c.kind for c in rest] == [ChunkKind.DONE]
    seen = shown + live + rest
    assert text_of(seen) == "Hello world" == store.reply_records("r-up")[0].content
