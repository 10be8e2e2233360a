"""An ``astream()`` dropped on a loop that is then closed leaves nothing registered.

A loop closed without ``shutdown_asyncgens()`` (a loop per job, as older code makes) never
runs the dropped driver's close, so the driver's own end (which stops the reply's periodic
checkpoints and its heartbeat) never runs either. Before the fix every such reply stayed
registered with the store's checkpointer and heartbeat for good: each kept its persister
(and what it holds) alive, and the checkpointer's thread ticked every ``checkpoint_every``
for the rest of the process, even after the store was closed. A reply whose consumer still
held a chunk when its loop was closed (its task never ended, so nothing saved it) also
stayed ``STREAMING`` while the process lived, its lease renewed: never resumable.

Each case here: the replies end as a dropped reply does (what was delivered,
``INTERRUPTED``; committed if the consumer held the final ``DONE``), no entry is left in the
checkpointer or the heartbeat, and both threads end (``LINGER`` patched to 0; the tests
join them, bounded by ``WAIT``).

Real OpenAI SDK over a replaying transport.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import ChunkKind, ContextWindow, ReplyState, _loopterm, checkpointer, heartbeat

JOBS = 3
EVERY = 0.05
"""The windows' ``checkpoint_every``: the checkpointer's thread looks at its replies that
often, so it ends soon after the last one leaves."""
WAIT = 10.0
"""The longest a thread may take to end once nothing is registered (the test then fails)."""


@pytest.fixture(autouse=True)
def no_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpointer, "LINGER", 0.0)
    monkeypatch.setattr(heartbeat, "LINGER", 0.0)


def window(store: Any, jobs: int = JOBS) -> ContextWindow:
    replay = Replay(*[text_body("chat", ["one ", "two"]) for _ in range(jobs)])
    return ContextWindow(store, model_for("chat", replay), "c", retry=None, checkpoint_every=EVERY)


def assert_interrupted(store: Any, cw: ContextWindow) -> None:
    """Nothing registered; every job's reply ended ``INTERRUPTED`` with what it delivered."""
    assert_unregistered(store)
    points = cw.checkpoints()
    assert [(p.state, p.text) for p in points] == [(ReplyState.INTERRUPTED, "one ")] * JOBS
    assert cw.active_replies() == []


def assert_unregistered(store: Any) -> None:
    """Nothing of the store's replies is registered, and both threads have ended."""
    timer = checkpointer.checkpointer_for(store, EVERY)
    beat = heartbeat.heartbeat_for(store)
    for thread in (timer._thread, beat._thread):
        if thread is not None:
            thread.join(WAIT)  # it ends once its last reply left (LINGER is 0)
    assert not timer._replies, f"{len(timer._replies)} replies left in the checkpointer"
    assert not beat._beats, f"{len(beat._beats)} replies left in the heartbeat"
    assert timer._thread is None and beat._thread is None
    # Nor does a closed loop's SIGTERM hand-over hold them (it is let go of first).
    held = [r for t in list(_loopterm._terms.values()) for r in t.replies]
    assert not [r for r in held if r.run.persister.store is store]  # type: ignore[attr-defined]


def run_jobs(cw: ContextWindow, job: Any, jobs: int = JOBS) -> None:
    """Each job on a loop of its own, closed without running the dropped generators' close."""
    for i in range(jobs):
        cw.add_prompt(f"q{i}")
        loop = asyncio.new_event_loop()
        loop.run_until_complete(job(cw, loop))
        loop.close()  # no shutdown_asyncgens()
        del loop
    gc.collect()


async def break_on(kind: ChunkKind, cw: ContextWindow) -> None:
    async for chunk in cw.astream():
        if chunk.kind is kind:
            break  # dropped here, unclosed, as the job ends


def test_a_stream_dropped_mid_reply_on_a_loop_then_closed_leaves_nothing_registered(
    tmp_path: Path,
) -> None:
    store = rxcontext.open(tmp_path / "db.sqlite")
    try:
        cw = window(store)
        run_jobs(cw, lambda cw, _: break_on(ChunkKind.TEXT, cw))
        assert_interrupted(store, cw)
    finally:
        store.close()


def test_a_stream_dropped_holding_its_final_done_leaves_nothing_registered(
    tmp_path: Path,
) -> None:
    """The consumer had the whole reply but never asked for the stream's end: committed."""
    store = rxcontext.open(tmp_path / "db.sqlite")
    try:
        cw = window(store)
        run_jobs(cw, lambda cw, _: break_on(ChunkKind.DONE, cw))
        assert_unregistered(store)
        assert cw.checkpoints() == [] and cw.active_replies() == []
        texts = [r.content for r in store.records(cw.context_id)]
        assert texts == [x for i in range(JOBS) for x in (f"q{i}", "one two")]
    finally:
        store.close()


async def hold_a_chunk(cw: ContextWindow, loop: asyncio.AbstractEventLoop) -> None:
    """Start a consumer that holds its first text chunk for good; return once it does.
    Its loop is then closed with its task still pending: the task never ends."""
    held = asyncio.Event()

    async def consume() -> None:
        async for chunk in cw.astream():
            if chunk.kind is ChunkKind.TEXT:
                held.set()
                await asyncio.Event().wait()  # never set: pending as the loop closes

    pending.append(loop.create_task(consume()))
    await held.wait()


pending: list[asyncio.Task[None]] = []


def test_a_loop_closed_while_its_consumer_holds_a_chunk_leaves_the_reply_resumable(
    tmp_path: Path,
) -> None:
    """Before the fix these replies stayed STREAMING (their leases renewed) while the
    process lived, and registered."""
    store = rxcontext.open(tmp_path / "db.sqlite")
    try:
        cw = window(store)
        run_jobs(cw, hold_a_chunk)
        pending.clear()
        gc.collect()  # the tasks, their consumers and the drivers are a cycle
        assert_interrupted(store, cw)
    finally:
        store.close()


def test_a_stream_kept_past_its_loops_close_leaves_nothing_registered_once_let_go(
    tmp_path: Path,
) -> None:
    store = rxcontext.open(tmp_path / "db.sqlite")
    kept: list[Any] = []

    async def keep(cw: ContextWindow, _: Any) -> None:
        stream = cw.astream()
        kept.append(stream)  # the app's registry of its streams, say
        async for chunk in stream:
            if chunk.kind is ChunkKind.TEXT:
                break

    try:
        cw = window(store)
        run_jobs(cw, keep)
        kept.clear()
        gc.collect()
        assert_interrupted(store, cw)
    finally:
        store.close()


@pytest.mark.parametrize("hold", [False, True], ids=["dropped", "held"])
def test_the_store_closed_before_the_dropped_replies_go_leaves_nothing_registered(
    hold: bool,
) -> None:
    """The store is closed after the loops, before the drivers are collected: what could
    not be written is the store's closing (logged); nothing stays registered."""
    store = rxcontext.open(":memory:")
    cw = window(store)
    kept: list[Any] = []

    async def drop(cw: ContextWindow, _: Any) -> None:
        stream = cw.astream()
        kept.append(stream)
        async for chunk in stream:
            if chunk.kind is ChunkKind.TEXT:
                break

    run_jobs(cw, hold_a_chunk if hold else drop)
    store.close()
    pending.clear()
    kept.clear()
    gc.collect()
    assert_unregistered(store)
