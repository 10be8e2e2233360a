"""A final write that PostgreSQL's ``lock_timeout`` refused is kept, as SQLite's busy one is.

A user may set ``lock_timeout`` for their database, role or connection (here: the
connection's ``options``, on this test's own database). rxcontext's final write of a reply
(its commit, or the checkpoint of its failure) takes the context's row lock; another
session holding that lock past the timeout makes the server refuse it (SQLSTATE 55P03,
lock not available). That refusal is the database being busy, not a broken store: the
subscriber gets ``StoreBusy`` and the final checkpoint — exactly the text it was shown —
is kept and written once the lock is gone (by the heartbeat, or as the store closes), the
reply its owner's meanwhile, as on SQLite (tests/test_busy_final_write.py).

The other session takes the lock from inside the model's stream, on this thread, after
the reply showed its text: no threads, no sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StoreBusy
from rxcontext.providers import ScriptedModel

psycopg = pytest.importorskip("psycopg")

T = Chunk


def with_lock_timeout(url: str) -> str:
    """``url`` whose connections have a ``lock_timeout`` of 50 ms (as a user may set)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote('-c lock_timeout=50ms')}"


class Locking(ScriptedModel):
    """Shows five chunks, then another session takes every context's row lock (held until
    the test lets it go), then the reply ends (``completed``: its commit meets the lock) or
    its connection is cut (``cut``: the checkpoint of that failure meets it)."""

    def __init__(self, other: Any, end: str) -> None:
        super().__init__([])
        self.other = other
        self.end = end

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        for i in range(5):
            yield T(ChunkKind.TEXT, f"<{i}>")
        self.other.execute("BEGIN")
        self.other.execute("SELECT 1 FROM contexts FOR UPDATE")
        yield T(ChunkKind.TEXT, "<end>")
        if self.end == "cut":
            raise ConnectionError("the model's connection was cut")
        yield T(ChunkKind.DONE, finish_reason="stop")


@pytest.mark.parametrize("end", ["completed", "cut"])
def test_a_final_write_refused_by_lock_timeout_is_kept_not_dropped(pg_url: str, end: str) -> None:
    url = with_lock_timeout(pg_url)
    other = psycopg.connect(pg_url, autocommit=True)
    store = rxcontext.open(url, retry_budget=0.5)
    try:
        assert store._runner.run(lambda c, _: c.execute("SHOW lock_timeout").fetchone()[0]) == (
            "50ms"
        )
        cw = ContextWindow(store, Locking(other, end), "c", retry=None)
        cw.add_prompt("go")
        shown: list[str] = []
        errors: list[BaseException] = []

        cw.stream(reply_id="r").subscribe(
            lambda c: shown.append(c.text) if c.kind is ChunkKind.TEXT else None, errors.append
        )
        assert "".join(shown) == "<0><1><2><3><4><end>"
        [error] = errors
        # Busy, as on SQLite: the text is kept (not a StoreError that gave it up).
        busy = error if isinstance(error, StoreBusy) else error.__cause__
        assert isinstance(busy, StoreBusy), repr(error)
        assert "lock" in str(busy) and "kept" in str(busy)
        # Meanwhile the reply is its owner's, live, for everyone else.
        found = store.find_reply("r")
        assert found is not None and found.state is ReplyState.STREAMING, found
        other.execute("ROLLBACK")
        store.close()  # writes the pending checkpoint, if the heartbeat has not yet
        store = rxcontext.open(pg_url)
        found = store.find_reply("r")
        assert found is not None and found.state is ReplyState.INTERRUPTED, found
        assert found.text == "".join(shown)
    finally:
        store.close()
        other.close()
