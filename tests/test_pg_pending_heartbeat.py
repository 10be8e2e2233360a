"""A reply's final write waiting for a lock never holds up the other replies' lease renewals.

With a user ``lock_timeout`` (tests/test_pg_lock_timeout.py), a reply's final write refused
by a lock another session holds on ITS context is kept and tried again by the heartbeat at
every poll. The heartbeat renews the leases of every reply of this worker: if its try of
that pending write waited (for the persister's write lock, held by the reply's own driver
retrying it for the whole ``retry_budget``, or for a retry loop of its own with that
budget), no lease of any other reply would be renewed meanwhile and an unrelated reply in
another context would lose its lease. So the heartbeat's try is one attempt that waits for
nothing: heartbeat rounds go on (and renew) while the lock is held, and the checkpoint is
written once it is gone.

Rounds are counted with the heartbeat's listeners (called after each round); the waits on
events are bounds that fail the test instead of hanging it, not sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StoreBusy
from rxcontext.heartbeat import heartbeat_for
from rxcontext.providers import ScriptedModel

psycopg = pytest.importorskip("psycopg")

T = Chunk
BOUND = 30.0  # seconds: far past a few heartbeat polls (0.25 s), far below the budget


def with_lock_timeout(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options={quote('-c lock_timeout=50ms')}"


class Waiting(ScriptedModel):
    """Reply B: one chunk, then waits (the model is slow) until the test lets it end."""

    def __init__(self, streaming: threading.Event, go: threading.Event) -> None:
        super().__init__([])
        self.streaming = streaming
        self.go = go

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        yield T(ChunkKind.TEXT, "[b]")
        self.streaming.set()
        assert self.go.wait(BOUND * 3)
        yield T(ChunkKind.DONE, finish_reason="stop")


class Locking(ScriptedModel):
    """Reply A: shows three chunks, then another session locks context a's row (only) and
    the model's connection is cut: the checkpoint of that failure meets the lock."""

    def __init__(self, store: Any, other: Any) -> None:
        super().__init__([])
        self.store = store
        self.other = other

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        for i in range(3):
            yield T(ChunkKind.TEXT, f"<{i}>")
        cid = self.store.get_context_by_name("a").id
        self.other.execute("BEGIN")
        self.other.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", (cid,))
        raise ConnectionError("the model's connection was cut")


@pytest.mark.parametrize("driver", ["still_writing", "gave_up"])
def test_a_pending_final_write_never_holds_up_the_heartbeat(pg_url: str, driver: str) -> None:
    """``still_writing``: A's driver is retrying its final write (budget 600 s) when the
    heartbeat finds it pending. ``gave_up``: A's driver got StoreBusy (budget 0.5 s), then
    the budget is 600 s for every later write, the heartbeat's included."""
    other = psycopg.connect(pg_url, autocommit=True)
    budget = 600.0 if driver == "still_writing" else 0.5
    store = rxcontext.open(with_lock_timeout(pg_url), retry_budget=budget)
    streaming, go = threading.Event(), threading.Event()
    outcomes: dict[str, BaseException | str] = {}
    threads: list[threading.Thread] = []
    try:
        heartbeat = heartbeat_for(store)
        seen_pending = 0
        rounds_done = threading.Event()

        def after_round() -> None:
            nonlocal seen_pending
            if any(b.persister.pending for b in list(heartbeat._beats.values())):
                seen_pending += 1
                if seen_pending >= 3:  # the 2nd and 3rd began with the write pending
                    rounds_done.set()

        heartbeat.listeners.append(after_round)

        def run(name: str, cw: ContextWindow) -> None:
            try:
                outcomes[name] = cw.call(reply_id=name).text
            except BaseException as e:  # reported to the test
                outcomes[name] = e

        cwb = ContextWindow(store, Waiting(streaming, go), "b")
        cwb.add_prompt("go")
        threads.append(threading.Thread(target=run, args=("B", cwb)))
        threads[-1].start()
        assert streaming.wait(BOUND)
        cwa = ContextWindow(store, Locking(store, other), "a", retry=None)
        cwa.add_prompt("go")
        if driver == "gave_up":
            run("A", cwa)
            assert isinstance(outcomes["A"], StoreBusy), repr(outcomes["A"])
            store._runner.retry_budget = 600.0  # type: ignore[attr-defined]
        else:
            threads.append(threading.Thread(target=run, args=("A", cwa)))
            threads[-1].start()
        # The heartbeat goes on while A's checkpoint waits for the lock.
        assert rounds_done.wait(BOUND), "heartbeat rounds stalled on the pending final write"
        found = store.find_reply("B")
        assert found is not None and found.state is ReplyState.STREAMING, found
        found = store.find_reply("A")
        assert found is not None and found.state is ReplyState.STREAMING, found
    finally:
        other.execute("ROLLBACK")
        go.set()
        for thread in threads:
            thread.join(BOUND * 3)
        store.close()  # writes A's checkpoint if the heartbeat has not yet
        other.close()
    assert outcomes["B"] == "[b]"
    store = rxcontext.open(pg_url)
    try:
        found = store.find_reply("A")
        assert found is not None and found.state is ReplyState.INTERRUPTED, found
        assert found.text == "<0><1><2>"
    finally:
        store.close()
