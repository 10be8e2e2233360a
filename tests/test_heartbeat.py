"""The heartbeat and ``cw.stop`` in one process, on both stores.

* Leases are renewed by a timer while the model sends nothing, with no periodic
  checkpoints at all (``checkpoint_every=None``); the thread starts with the first reply,
  ends with the last, and ``store.close()`` waits for it (no thread left behind).
* A reply taken over elsewhere while it streams: the next renewal finds it lost and its
  subscriber gets ``OwnershipLost`` at the next chunk; nothing of it is stored.
* ``cw.stop(reply_id)`` while the model is silent (the sync driver blocked in a read, the
  async one awaiting it) and while an async consumer holds a chunk: the subscriber gets
  ``StreamInterrupted`` caused by ``ReplyStopped``, whose checkpoint holds exactly what it
  received; nothing more is delivered. Unknown ids raise ``ReplyNotFound``; finished
  replies give False.

Waits use events set by the code under test (the heartbeat's ``listeners``, the
subscriber's callbacks), never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import httpx2
import psycopg
import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay, pieces, real_fixture

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    OwnershipLost,
    ProviderError,
    RecordType,
    ReplyNotFound,
    ReplyState,
    ReplyStopped,
    StoreBusy,
    StreamInterrupted,
)
from rxcontext.heartbeat import heartbeat_for
from rxcontext.providers import ScriptedModel
from rxcontext.providers.base import Request
from rxcontext.store import sqlite_holds
from tests.stores import scalar
from tests.test_store_leases import execute

WAIT = 10.0  # the longest any event may take on a loaded machine before the test fails
TTL = 0.6


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


class PausingModel(ScriptedModel):
    """Sends ``before``, then says nothing until ``go`` is set, then sends ``after`` (an
    exception there is raised)."""

    def __init__(self, before: list[Chunk], after: list[Chunk | BaseException]) -> None:
        super().__init__([[*before, *after]])
        self.before, self.after = before, after
        self.go = threading.Event()
        self.paused = threading.Event()
        self.async_go: asyncio.Event | None = None

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        self.requests.append(request)
        yield from self.before
        self.paused.set()
        self.go.wait(WAIT)
        for chunk in self.after:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        self.async_go = asyncio.Event()
        for chunk in self.before:
            yield chunk
        self.paused.set()
        await asyncio.wait_for(self.async_go.wait(), WAIT)
        for chunk in self.after:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk


class Subscriber:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.error: BaseException | None = None
        self.completed = False
        self.ended = threading.Event()
        self.first = threading.Event()

    def on_next(self, chunk: Chunk) -> None:
        self.texts.append(chunk.text)
        self.first.set()

    def on_error(self, error: BaseException) -> None:
        self.error = error
        self.ended.set()

    def on_completed(self) -> None:
        self.completed = True
        self.ended.set()


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def rounds(store: Any, n: int, *, renewals: bool = False) -> None:
    """Wait until the heartbeat of ``store`` has run ``n`` more rounds (renewals, if asked)."""
    hb = heartbeat_for(store)
    done = threading.Event()
    start = hb.renewals if renewals else 0
    count = [0]

    def listener() -> None:
        count[0] += 1
        if (hb.renewals - start if renewals else count[0]) >= n:
            done.set()

    hb.listeners.append(listener)
    try:
        assert done.wait(WAIT), "the heartbeat did not run"
    finally:
        hb.listeners.remove(listener)


def until(store: Any, done: Callable[[], bool]) -> None:
    """Wait until ``done()`` holds at the end of a heartbeat round of ``store``."""
    hb = heartbeat_for(store)
    event = threading.Event()

    def listener() -> None:
        if done():
            event.set()

    hb.listeners.append(listener)
    try:
        assert event.wait(WAIT), "the heartbeat did not get there"
    finally:
        hb.listeners.remove(listener)


def lease_of(store: Any, reply_id: str) -> datetime:
    value = scalar(store, f"SELECT lease_until FROM checkpoints WHERE reply_id = '{reply_id}'")
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def heartbeat_thread(store: Any) -> threading.Thread | None:
    """``store``'s heartbeat thread, if it runs (other tests' stores may have theirs)."""
    thread = heartbeat_for(store)._thread
    assert thread is None or thread in threading.enumerate()
    return thread


@pytest.fixture
def store(make_store: Callable[..., Any]) -> Any:
    return make_store(lease_ttl=TTL)


def window(store: Any, model: ScriptedModel) -> ContextWindow:
    cw = ContextWindow(store, model, "c", checkpoint_every=None)
    cw.add_prompt("hi")
    return cw


def test_leases_are_renewed_while_the_model_is_silent(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rxcontext import heartbeat

    monkeypatch.setattr(heartbeat, "LINGER", 0.0)  # no wait for a next reply
    model = PausingModel([T("a")], [T("b"), DONE])
    cw = window(store, model)
    sub = Subscriber()
    driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(sub))
    assert model.paused.wait(WAIT)
    thread = heartbeat_thread(store)
    assert thread is not None and thread.is_alive()
    before = lease_of(store, "r")
    rounds(store, 2, renewals=True)
    assert lease_of(store, "r") > before
    assert store.find_reply("r").state is ReplyState.STREAMING
    model.go.set()
    assert sub.ended.wait(WAIT) and sub.completed
    driver.join(WAIT)
    thread.join(WAIT)  # the last reply ended (and LINGER is 0): so did the thread
    assert not thread.is_alive()
    assert [r.content for r in store.records(cw.context_id)] == ["hi", "ab"]


def test_closing_the_store_stops_the_heartbeat(make_store: Callable[..., Any]) -> None:
    store = make_store(lease_ttl=TTL)
    model = PausingModel([T("a")], [T("b"), DONE])
    cw = window(store, model)
    sub = Subscriber()
    driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(sub))
    assert model.paused.wait(WAIT)
    thread = heartbeat_thread(store)
    assert thread is not None and thread.is_alive()
    store.close()
    assert not thread.is_alive() and thread not in threading.enumerate()
    model.go.set()
    driver.join(WAIT)
    assert sub.ended.is_set()  # the driver could not store the reply: it said so


def test_a_reply_taken_over_elsewhere_fails_with_ownership_lost(store: Any) -> None:
    model = PausingModel([T("a")], [T("b"), T("c"), DONE])
    cw = window(store, model)
    sub = Subscriber()
    driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(sub))
    assert model.paused.wait(WAIT)
    # Another worker claimed it (it thought this one dead): next epoch, its owner.
    execute(
        store,
        "UPDATE checkpoints SET epoch = epoch + 1, state = 'resuming',"
        " owner = 'elsewhere.invalid:1:1' WHERE reply_id = 'r'",
    )
    rounds(store, 1, renewals=True)
    model.go.set()
    assert sub.ended.wait(WAIT)
    driver.join(WAIT)
    assert isinstance(sub.error, OwnershipLost), sub.error
    assert "".join(sub.texts) in ("a", "ab")  # nothing after the renewal said it was lost
    assert not sub.completed
    assert [r.content for r in store.records(cw.context_id)] == ["hi"]
    row = store.find_reply("r")
    assert row.owner == "elsewhere.invalid:1:1" and row.text == ""  # the zombie wrote nothing


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_reply_that_lost_its_lease_checkpoints_exactly_what_was_delivered(
    tmp_path: Any, path: str
) -> None:
    """The lease ran out while the model was silent (another process held the database's
    write lock meanwhile, so no renewal landed); nobody took the reply over, so its own
    final write still lands. The chunk that comes next is either delivered or not in the
    checkpoint: asyncio folded it, then raised the loss before yielding it."""
    import sqlite3

    store = rxcontext.open(str(tmp_path / "db.sqlite"), lease_ttl=TTL)
    try:
        model = PausingModel([T("a")], [T("b"), T("c"), DONE])
        cw = window(store, model)
        got: list[str] = []
        outcome: list[BaseException] = []
        if path == "sync":

            def consume() -> None:
                try:
                    cw.call(rxcontext.operators.middleware(on_chunk=lambda c: got.append(c.text)))
                except StreamInterrupted as error:
                    outcome.append(error)

            consumer = in_thread(consume)
        else:
            loop = asyncio.new_event_loop()

            async def aconsume() -> None:
                try:
                    async for chunk in cw.astream():
                        got.append(chunk.text)
                except StreamInterrupted as error:
                    outcome.append(error)

            consumer = in_thread(lambda: loop.run_until_complete(aconsume()))
        assert model.paused.wait(WAIT)
        other = sqlite3.connect(str(tmp_path / "db.sqlite"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # no renewal can land now
        rounds(store, 6)  # ≥ 1.25 s of heartbeat rounds: past TTL without a renewal
        other.execute("COMMIT")
        other.close()
        if path == "sync":
            model.go.set()
        else:
            assert model.async_go is not None
            loop.call_soon_threadsafe(model.async_go.set)
        consumer.join(WAIT)
        assert not consumer.is_alive()
        [error] = outcome
        assert isinstance(error.__cause__, OwnershipLost), repr(error.__cause__)
        assert error.checkpoint.text == "".join(got)
        assert store.find_reply(error.checkpoint.reply_id).text == "".join(got)
        if path == "async":
            loop.close()
    finally:
        store.close()


def _consume_until_busy(
    cw: ContextWindow, path: str, got: list[str], outcome: list[BaseException]
) -> tuple[threading.Thread, Callable[[], None]]:
    """Consume ``cw``'s reply on a thread (``path``: sync or asyncio), keeping its text in
    ``got`` and its ``StoreBusy`` in ``outcome``; returns the thread and what lets the
    paused model go on."""
    model = cw.model
    assert isinstance(model, PausingModel)
    if path == "sync":

        def consume() -> None:
            try:
                cw.call(
                    rxcontext.operators.middleware(on_chunk=lambda c: got.append(c.text)),
                    reply_id="r",
                )
            except StoreBusy as error:
                outcome.append(error)

        return in_thread(consume), model.go.set
    loop = asyncio.new_event_loop()

    async def aconsume() -> None:
        try:
            async for chunk in cw.astream(reply_id="r"):
                got.append(chunk.text)
        except StoreBusy as error:
            outcome.append(error)

    def run() -> None:
        loop.run_until_complete(aconsume())
        loop.close()

    def go() -> None:
        assert model.async_go is not None
        loop.call_soon_threadsafe(model.async_go.set)

    return in_thread(run), go


def _busy_ending(ending: str) -> list[Chunk | BaseException]:
    """What the model sends after its pause: the reply's end, or a failure mid-reply."""
    if ending == "completed":
        return [T("two "), T("three"), DONE]
    return [T("two "), ProviderError("the connection dropped", provider="scripted")]


@pytest.mark.parametrize("ending", ["completed", "failed"])
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_final_write_the_busy_database_refused_is_written_once_it_is_free(
    tmp_path: Any, path: str, ending: str
) -> None:
    """Another process holds the database's write lock as the reply ends (its commit, or
    the checkpoint of its failure): the subscriber gets ``StoreBusy``, and the final
    checkpoint, exactly what it received, is kept and written by the heartbeat once the
    lock is gone. Meanwhile the reply stays this process's (its lease renewed), never
    read as dead with less than was delivered."""
    import sqlite3

    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=0.05)
    try:
        model = PausingModel([T("one ")], _busy_ending(ending))
        cw = ContextWindow(store, model, "c", checkpoint_every=None, retry=None)
        cw.add_prompt("hi")
        got: list[str] = []
        outcome: list[BaseException] = []
        consumer, go = _consume_until_busy(cw, path, got, outcome)
        assert model.paused.wait(WAIT)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        go()
        consumer.join(WAIT)
        assert not consumer.is_alive()
        [error] = outcome
        assert "written as the reply's checkpoint" in str(error), error
        assert "".join(got) == ("one two three" if ending == "completed" else "one two ")
        [live] = cw.active_replies()  # still this process's: nobody may take it over
        assert live.state is ReplyState.STREAMING
        other.execute("ROLLBACK")
        other.close()
        # Written by a heartbeat round (the row reads interrupted from then on), and the
        # reply no longer held for its final write (its lease decides again).
        until(store, lambda: store.find_reply("r").state is ReplyState.INTERRUPTED)
        holds = sqlite_holds.holds_path(db)
        assert holds is not None
        assert not sqlite_holds.held(holds, live.id, os.getpid(), here=True)
        with rxcontext.open(db) as elsewhere:
            [checkpoint] = ContextWindow(elsewhere, None, "c").checkpoints()
            assert checkpoint.state is ReplyState.INTERRUPTED
            assert checkpoint.text == "".join(got)
            cause = "StoreBusy" if ending == "completed" else "ProviderError"
            assert (checkpoint.error or "").startswith(cause), checkpoint.error
            assert [r.content for r in elsewhere.records(cw.context_id)] == ["hi"]
    finally:
        store.close()


def test_closing_the_store_writes_a_final_checkpoint_still_pending(tmp_path: Any) -> None:
    """The heartbeat had no round between the lock going and ``store.close()``: closing
    writes the pending final checkpoint itself, before the connections go."""
    import sqlite3

    db = str(tmp_path / "db.sqlite")
    store = rxcontext.open(db, busy_timeout=0.05)
    model = PausingModel([T("one ")], _busy_ending("completed"))
    cw = ContextWindow(store, model, "c", checkpoint_every=None, retry=None)
    cw.add_prompt("hi")
    got: list[str] = []
    outcome: list[BaseException] = []
    consumer, go = _consume_until_busy(cw, "sync", got, outcome)
    assert model.paused.wait(WAIT)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    go()
    consumer.join(WAIT)
    assert [type(e) for e in outcome] == [StoreBusy]
    # Hold the heartbeat's thread after a round, release the lock, then close the store.
    parked, hold = threading.Event(), threading.Event()

    def park() -> None:
        parked.set()
        hold.wait(WAIT)

    heartbeat_for(store).listeners.append(park)
    assert parked.wait(WAIT)
    other.execute("ROLLBACK")
    other.close()
    closing = in_thread(store.close)
    hold.set()
    closing.join(WAIT)
    assert not closing.is_alive()
    with rxcontext.open(db) as elsewhere:
        [checkpoint] = ContextWindow(elsewhere, None, "c").checkpoints()
        assert checkpoint.text == "".join(got) == "one two three"


EXIT_CHILD = """
import sys, threading
import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, StoreBusy
from rxcontext.heartbeat import heartbeat_for
from rxcontext.store import sqlite_holds
from rxcontext.providers import ScriptedModel

class Pausing(ScriptedModel):
    def iter_chunks(self, request):
        yield Chunk(ChunkKind.TEXT, "one ")
        print("paused", flush=True)
        sys.stdin.readline()  # the parent holds the lock now
        yield Chunk(ChunkKind.TEXT, "two")
        yield Chunk(ChunkKind.DONE, finish_reason="stop")

store = rxcontext.open(sys.argv[1], busy_timeout=0.05)
cw = ContextWindow(store, Pausing([]), "c", checkpoint_every=None, retry=None)
cw.add_prompt("hi")
try:
    cw.call()
except StoreBusy:
    pass
parked = threading.Event()
heartbeat_for(store).listeners.append(lambda: (parked.set(), threading.Event().wait()))
parked.wait(10)  # no heartbeat round from here: only the exit can write it
print("busy", flush=True)
sys.stdin.readline()  # the parent let the lock go; exit without closing the store
"""


def test_the_process_exit_writes_a_final_checkpoint_still_pending(tmp_path: Any) -> None:
    """A process that ends (without closing its store) right after the lock went tries
    the final checkpoint a busy database refused once more as it exits."""
    import sqlite3
    import subprocess
    import sys

    db = str(tmp_path / "db.sqlite")
    rxcontext.open(db).close()
    child = subprocess.Popen(
        [sys.executable, "-c", EXIT_CHILD, db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "paused\n"
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "busy\n"
        other.execute("ROLLBACK")
        other.close()
        child.stdin.write("exit\n")
        child.stdin.flush()
        assert child.wait(WAIT) == 0
    finally:
        child.kill()
        child.wait()
    with rxcontext.open(db) as elsewhere:
        [checkpoint] = ContextWindow(elsewhere, None, "c").checkpoints()
        assert checkpoint.text == "one two"
        assert (checkpoint.error or "").startswith("StoreBusy"), checkpoint.error


def test_stop_while_the_model_is_silent_sync(store: Any) -> None:
    model = PausingModel([T("Hel"), T("lo")], [T(" world"), DONE])
    cw = window(store, model)
    sub = Subscriber()
    driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(sub))
    assert model.paused.wait(WAIT)
    assert cw.stop("r") is True
    assert sub.ended.wait(WAIT)
    assert isinstance(sub.error, StreamInterrupted), sub.error
    assert isinstance(sub.error.__cause__, ReplyStopped)
    checkpoint = sub.error.checkpoint
    assert checkpoint.text == "".join(sub.texts) == "Hello"
    assert checkpoint.state is ReplyState.INTERRUPTED and "ReplyStopped" in (checkpoint.error or "")
    assert [cp.reply_id for cp in cw.checkpoints()] == ["r"]
    assert cw.stop("r") is False  # interrupted now: nothing runs
    model.go.set()
    driver.join(WAIT)
    assert "".join(sub.texts) == "Hello" and not sub.completed  # nothing more was delivered
    # It resumes like any interrupted reply.
    cw.model = ScriptedModel([[T(" world"), DONE]])
    reply = cw.resume_call(checkpoint.id)
    assert reply.text == "Hello world"


def test_stop_a_blocking_call(store: Any) -> None:
    model = PausingModel([T("Hel"), T("lo")], [T(" world"), DONE])
    cw = window(store, model)
    outcome: list[BaseException] = []
    caller = consume_in_thread(cw, "sync", outcome)
    assert model.paused.wait(WAIT)
    assert cw.stop("r") is True
    rounds(store, 1)  # the stop was handled (the checkpoint is stored from here on)
    assert store.find_reply("r").state is ReplyState.INTERRUPTED
    model.go.set()  # call() returns once its blocking read does
    caller.join(WAIT)
    (error,) = outcome
    assert isinstance(error.__cause__, ReplyStopped) and error.checkpoint.text == "Hello"
    assert [r.content for r in store.records(cw.context_id)] == ["hi"]


def test_stop_while_the_model_is_silent_async(store: Any) -> None:
    model = PausingModel([T("Hel"), T("lo")], [T(" world"), DONE])
    cw = window(store, model)
    got: list[str] = []

    async def main() -> BaseException:
        async def consume() -> None:
            async for chunk in cw.astream(reply_id="r"):
                got.append(chunk.text)

        task = asyncio.create_task(consume())
        while not model.paused.is_set():
            await asyncio.sleep(0)  # let the consumer reach the pause (no time passes)
        assert await cw.astop("r") is True
        try:
            await asyncio.wait_for(task, WAIT)
        except StreamInterrupted as error:
            return error
        raise AssertionError("the stream was not stopped")

    error = asyncio.run(main())
    assert isinstance(error, StreamInterrupted) and isinstance(error.__cause__, ReplyStopped)
    assert error.checkpoint.text == "".join(got) == "Hello"
    assert store.find_reply("r").state is ReplyState.INTERRUPTED


class _Refused(ScriptedModel):
    """A scripted model that says when its first attempt has ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = threading.Event()

    def iter_chunks(self, request: Any) -> Any:
        try:
            yield from super().iter_chunks(request)
        finally:
            self.refused.set()


@pytest.mark.parametrize("path", ["sync", "async"])
def test_stop_during_a_retry_wait_ends_the_reply_at_once(store: Any, path: str) -> None:
    """A reply waiting to send its request again (a 429's Retry-After, up to a minute) is
    stopped at once on both paths, as ``cw.stop`` promises. The wait is 30 s (sync: the
    real clock; async: a virtual clock that never advances here), longer than the bound."""
    from faultmodels import Clock

    busy = ProviderError("rate limited", provider="openai", status_code=429, retryable=True)
    model = _Refused([[busy], [T("never"), DONE]])
    retry = rxcontext.RetryPolicy(max_attempts=3, initial_delay=30.0, jitter=0.0)
    outcome: list[BaseException] = []
    if path == "sync":
        cw = ContextWindow(store, model, "c", checkpoint_every=None, retry=retry)
        cw.add_prompt("hi")
        consumer = consume_in_thread(cw, "sync", outcome)
        # The first attempt was refused: the driver is in its wait or about to begin it (a
        # stop just before the wait ends it as well). Stopping right after on_start instead
        # could land before the request went out, and no request would be sent at all.
        assert model.refused.wait(WAIT)
        assert cw.stop("r") is True
        consumer.join(WAIT)
        assert not consumer.is_alive()
    else:
        clock = Clock()
        cw = ContextWindow(store, model, "c", checkpoint_every=None, retry=retry, scheduler=clock)
        cw.add_prompt("hi")

        async def main() -> None:
            task = asyncio.create_task(cw.acall(reply_id="r"))
            await clock.armed(1)  # in the retry wait
            assert await cw.astop("r") is True
            try:
                await asyncio.wait_for(task, WAIT)
            except StreamInterrupted as error:
                outcome.append(error)

        asyncio.run(main())
        assert clock.clock == 0
    (error,) = outcome
    assert isinstance(error.__cause__, ReplyStopped)
    assert len(model.requests) == 1
    assert store.find_reply("r").state is ReplyState.INTERRUPTED


def test_stop_while_an_async_consumer_holds_a_chunk(store: Any) -> None:
    model = ScriptedModel([[T("one "), T("two "), T("three"), DONE]])
    cw = window(store, model)
    got: list[str] = []

    async def main() -> BaseException:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        hb = heartbeat_for(store)
        try:
            async for chunk in cw.astream(reply_id="r"):
                got.append(chunk.text)
                if len(got) == 1:
                    # Hold the chunk until the heartbeat has handed the stop to the driver.
                    def listener() -> None:
                        if hb.polls and store.find_reply("r").state is ReplyState.INTERRUPTED:
                            loop.call_soon_threadsafe(stopped.set)

                    hb.listeners.append(listener)
                    assert await cw.astop("r") is True
                    await asyncio.wait_for(stopped.wait(), WAIT)
                    hb.listeners.remove(listener)
        except StreamInterrupted as error:
            return error
        raise AssertionError("the stream was not stopped")

    error = asyncio.run(main())
    assert isinstance(error.__cause__, ReplyStopped)
    assert got == ["one "] and error.checkpoint.text == "one "


class SilentAfter:
    """An async transport whose response sends the first ``n`` events of ``body``, then
    nothing (the model thinking) until the client closes it; ``held`` is set from then on."""

    def __init__(self, body: bytes, n: int) -> None:
        self.held = threading.Event()
        self.closed = 0
        parts, held = pieces(body)[:n], self.held
        transport = self

        class Body(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                for part in parts:
                    yield part
                held.set()
                await asyncio.Event().wait()  # silent until cancelled

            async def aclose(self) -> None:
                transport.closed += 1

        def handle(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, stream=Body()
            )

        self.transport = httpx2.MockTransport(handle)

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self.transport)

    def async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self.transport)


async def _until_set(event: threading.Event) -> None:
    """Let the loop run (no clock) until ``event`` is set by the stream it drives."""
    for _ in range(100_000):
        if event.is_set():
            return
        await asyncio.sleep(0)
    raise AssertionError("the event was never set")


@pytest.mark.parametrize("how", ["wait_for", "a-task-per-chunk"])
def test_stop_while_the_model_is_silent_reaches_a_stream_advanced_from_other_tasks(
    make_store: Callable[..., Any], how: str
) -> None:
    """The read a stop cancels is the one of the task advancing the stream now, not of the
    task that took its first chunk (long ended when every ``anext`` runs in a task of its
    own: ``asyncio.wait_for`` on Python 3.11, a race against a disconnect)."""
    # A lease far longer than TTL: on a loaded machine a 0.6 s one ran out before the stop
    # (astop then rightly answers False: nothing live to stop), which is not this test's case.
    store = make_store(lease_ttl=WAIT * 3)
    silent = SilentAfter(text_body("chat", ["one ", "two ", "three"]), 3)  # role, one, two
    cw = ContextWindow(store, model_for("chat", silent), "c", checkpoint_every=None)
    cw.add_prompt("hi")
    got: list[str] = []

    async def main() -> BaseException:
        stream = cw.astream(reply_id="r")

        async def consume() -> None:
            while True:
                if how == "wait_for":
                    chunk = await asyncio.wait_for(anext(stream), WAIT)
                else:
                    chunk = await asyncio.create_task(anext(stream))
                got.append(chunk.text)

        task = asyncio.create_task(consume())
        await _until_set(silent.held)
        assert await cw.astop("r") is True
        try:
            await asyncio.wait_for(task, WAIT)
        except StreamInterrupted as error:
            return error
        raise AssertionError("the stream was not stopped")

    error = asyncio.run(main())
    assert isinstance(error.__cause__, ReplyStopped)
    assert error.checkpoint.text == "".join(got) == "one two "
    assert silent.closed == 1


def test_a_stop_and_a_cancel_in_the_same_loop_turn_leave_the_task_cancelled(store: Any) -> None:
    """A stop (the driver cancels its own read) and a cancel from elsewhere (a shutdown, an
    ``asyncio.timeout``) that reach the loop together: the stop is not raised in place of
    the other cancel, which would be swallowed (the task running on, still cancelling). The
    task ends cancelled; what it received is the checkpoint."""
    silent = SilentAfter(text_body("chat", ["one ", "two ", "three"]), 2)  # role, one
    cw = ContextWindow(store, model_for("chat", silent), "c", checkpoint_every=None)
    cw.add_prompt("hi")
    hb = heartbeat_for(store)
    got: list[str] = []

    async def main() -> str:
        async def consume() -> str:
            try:
                async for chunk in cw.astream(reply_id="r"):
                    got.append(chunk.text)
            except StreamInterrupted:
                task = asyncio.current_task()
                assert task is not None
                return f"StreamInterrupted, cancelling()={task.cancelling()}"
            return "ended"

        task = asyncio.create_task(consume())
        await _until_set(silent.held)
        # The loop takes no turn from here to the ``await``: the heartbeat hands the stop
        # to it (queued), then the cancel comes; one turn runs both.
        assert cw.stop("r") is True
        polled = threading.Semaphore(0)
        hb.listeners.append(polled.release)
        try:  # the second poll after the request began after it: the stop is handed over
            assert polled.acquire(timeout=WAIT) and polled.acquire(timeout=WAIT)
        finally:
            hb.listeners.remove(polled.release)
        task.cancel()
        try:
            return await asyncio.wait_for(task, WAIT)
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled"
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.text == "".join(got) == "one "
    assert silent.closed == 1


def test_stop_what_does_not_run(store: Any) -> None:
    cw = window(store, ScriptedModel([[T("done"), DONE]]))
    with pytest.raises(ReplyNotFound):
        cw.stop("never-begun")
    with pytest.raises(TypeError):
        cw.stop("")
    cw.call(reply_id="r")
    assert cw.stop("r") is False
    assert [r.type for r in store.records(cw.context_id)] == [
        RecordType.PROMPT,
        RecordType.MODEL_RESP,
    ]


def test_open_takes_lease_ttl() -> None:
    with rxcontext.open(":memory:", lease_ttl=1.5) as s:
        assert s.lease_ttl == 1.5
        hb = heartbeat_for(s)
        assert hb.renew_every == 0.5 and hb.poll_every == 0.25


@pytest.mark.parametrize("path", ["sync", "async"])
def test_stop_while_a_tool_runs(store: Any, path: str) -> None:
    call = Chunk(ChunkKind.TOOL_CALL, "{}", index=0, id="c1", name="slow")
    model = ScriptedModel([[T("Let me check. "), call, Chunk(ChunkKind.DONE)], [T("never")]])
    cw = window(store, model)
    running, release = threading.Event(), threading.Event()

    def slow(args: dict[str, Any]) -> str:
        running.set()
        release.wait(WAIT)
        return "done"

    cw.add_tool(rxcontext.Tool("slow", "A slow tool"), slow)
    outcome: list[BaseException] = []
    consumer = consume_in_thread(cw, path, outcome)
    assert running.wait(WAIT)
    assert cw.stop("r") is True
    rounds(store, 1)
    release.set()
    consumer.join(WAIT)
    (error,) = outcome
    assert isinstance(error.__cause__, ReplyStopped)
    assert len(model.requests) == 1  # the next round was never sent
    types = [r.type for r in store.records(cw.context_id)]
    assert types[:2] == [RecordType.PROMPT, RecordType.MODEL_RESP]
    assert RecordType.TOOL_CALL in types  # the round before the stop is stored as it was
    # The running tool finished and its output is stored (docs/guarantees.md), on both
    # paths: a resume sends it, not "interrupted".
    outputs = [r.content for r in store.records(cw.context_id) if r.type is RecordType.TOOL_OUTPUT]
    assert outputs == ["done"]
    assert [cp.reply_id for cp in cw.checkpoints()] == ["r"]


WEATHER = "openai_chat/parallel_tool_calls_gpt35.sse"
"""A real gpt-3.5 round with two tool calls (San Francisco, then Boston); served by the real
openai SDK over a replay. The stop comes before any tool runs: no second request is sent."""
FIRST_CALL, SECOND_CALL = "call_cCPjAyfwTzboEKjVlqFrArNF", "call_Zi4He1Ns0mozwT6f85nW1BOW"


def weather_window(
    store: Any, approval: Any
) -> tuple[ContextWindow, Replay, list[str], list[BaseException]]:
    replay = Replay(real_fixture(WEATHER))
    cw = ContextWindow(
        store,
        model_for("chat", replay),
        "c",
        checkpoint_every=None,
        retry=None,
        tool_approval=approval,
    )
    ran: list[str] = []
    tool = rxcontext.Tool("get_current_weather", "The weather").string("location", "a city")
    cw.add_tool(tool, lambda args: ran.append(args["location"]) or "sunny")
    cw.add_prompt("What's the weather like in San Francisco and Boston?")
    return cw, replay, ran, []


def consume_in_thread(
    cw: ContextWindow, path: str, outcome: list[BaseException]
) -> threading.Thread:
    def consume() -> None:
        try:
            if path == "sync":
                cw.call(reply_id="r")
            else:

                async def main() -> None:
                    async for _ in cw.astream(reply_id="r"):
                        pass

                asyncio.run(main())
        except StreamInterrupted as error:
            outcome.append(error)

    return in_thread(consume)


def stopped_before_its_tools(
    store: Any, cw: ContextWindow, replay: Replay, ran: list[str], outcome: list[BaseException]
) -> None:
    """What a stop before any tool started leaves, on both paths: no tool ran, no output is
    stored, the round with its calls is, and its checkpoint (the next round, nothing
    delivered) is what the subscriber's StreamInterrupted carries; no next request is sent."""
    (error,) = outcome
    assert isinstance(error, StreamInterrupted) and isinstance(error.__cause__, ReplyStopped)
    assert ran == []
    assert len(replay.requests) == 1
    assert [(r.type, r.tool_call_id) for r in store.records(cw.context_id)] == [
        (RecordType.PROMPT, None),
        (RecordType.TOOL_CALL, FIRST_CALL),
        (RecordType.TOOL_CALL, SECOND_CALL),
    ]
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.reply_id == "r" and checkpoint.state is ReplyState.INTERRUPTED
    assert "ReplyStopped" in (checkpoint.error or "") and checkpoint.text == ""
    assert error.checkpoint.id == checkpoint.id and error.checkpoint.text == ""


@pytest.mark.parametrize(
    ("path", "hook"), [("sync", "sync"), ("async", "async"), ("async", "sync")]
)
def test_stop_while_the_approval_hook_decides(store: Any, path: str, hook: str) -> None:
    """The approval hook is asking a person about the first of two calls when the reply is
    stopped: it is asked nothing more, no tool runs (none was running), nothing is stored
    for them, and the subscriber gets StreamInterrupted, on both paths; on asyncio whether
    the hook is async (the loop runs meanwhile) or blocks the loop."""
    asked: list[str] = []
    deciding, decided = threading.Event(), threading.Event()
    person: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def approval(call: rxcontext.ToolCall) -> bool:
        asked.append(call.id)
        if len(asked) == 1:
            deciding.set()
            decided.wait(WAIT)
        return True

    async def aapproval(call: rxcontext.ToolCall) -> bool:
        asked.append(call.id)
        if len(asked) == 1:
            person.append((asyncio.get_running_loop(), asyncio.Event()))
            deciding.set()
            await asyncio.wait_for(person[0][1].wait(), WAIT)
        return True

    cw, replay, ran, outcome = weather_window(store, approval if hook == "sync" else aapproval)
    consumer = consume_in_thread(cw, path, outcome)
    assert deciding.wait(WAIT)
    assert cw.stop("r") is True
    # Two whole heartbeat rounds: the second looked for stops after the request was stored,
    # and handed it to the driver (on asyncio, to its loop, before anything queued here).
    rounds(store, 2)
    if person:
        loop, event = person[0]
        loop.call_soon_threadsafe(event.set)  # the person decides: yes
    else:
        decided.set()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert asked == [FIRST_CALL]
    stopped_before_its_tools(store, cw, replay, ran, outcome)


@pytest.mark.parametrize("path", ["sync", "async"])
def test_stop_during_the_tool_rounds_commit(
    store: Any, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop reaches the driver while the round with the tool calls is being committed:
    the round is stored, then the reply ends; no tool is asked about or run, on both paths."""
    from rxcontext.persist import ReplyPersister

    asked: list[str] = []
    cw, replay, ran, outcome = weather_window(store, lambda call: asked.append(call.id) or True)
    committing, stop_in = threading.Event(), threading.Event()
    commit_reply = store.commit_reply

    def paused_commit(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("end") == "round":
            committing.set()
            assert stop_in.wait(WAIT), "the stop never reached the driver"
        return commit_reply(*args, **kwargs)

    monkeypatch.setattr(store, "commit_reply", paused_commit)
    stop_now = ReplyPersister.stop_now

    def spied_stop_now(self: ReplyPersister, error: rxcontext.RxContextError) -> Any:
        stop_in.set()  # the sync driver's stop, on the heartbeat's thread: it waits for the commit
        return stop_now(self, error)

    monkeypatch.setattr(ReplyPersister, "stop_now", spied_stop_now)
    consumer = consume_in_thread(cw, path, outcome)
    assert committing.wait(WAIT)
    assert cw.stop("r") is True
    if path == "async":
        # The heartbeat handed the stop to the driver's loop, which took it at once (the
        # driver awaits the commit in a worker thread): it is in before the commit returns.
        rounds(store, 2)
        stop_in.set()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert asked == []
    stopped_before_its_tools(store, cw, replay, ran, outcome)


def test_a_stop_hint_is_told_after_the_durable_request(store: Any) -> None:
    from rxcontext.heartbeat import set_stop_hint
    from rxcontext.store.owner import worker_id

    told: list[tuple[str, str | None, int | None]] = []

    class Hint:
        def announce(self, reply_id: str, owner: str | None) -> None:
            # The request is stored before the hint goes out: a receiver may rely on it.
            told.append((reply_id, owner, scalar(store, "SELECT stop_epoch FROM checkpoints")))
            raise ConnectionError("the fast channel is down")  # never fails the stop

    model = PausingModel([T("a")], [DONE])
    cw = window(store, model)
    sub = Subscriber()
    driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(sub))
    assert model.paused.wait(WAIT)
    set_stop_hint(store, Hint())
    try:
        assert cw.stop("r") is True
    finally:
        set_stop_hint(store, None)
    assert sub.ended.wait(WAIT) and isinstance(sub.error, StreamInterrupted)
    model.go.set()
    driver.join(WAIT)
    assert told == [("r", worker_id(), 1)]


def test_replies_one_after_another_reuse_the_heartbeat_thread(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting a thread costs ~120 µs of a reply's time to first chunk: the heartbeat's
    # waits LINGER seconds for the next reply before it ends.
    from rxcontext import heartbeat

    monkeypatch.setattr(heartbeat, "LINGER", 600.0)
    model = ScriptedModel([[T("a"), DONE], [T("b"), DONE]])
    cw = window(store, model)
    assert cw.call().text == "a"
    first = heartbeat_thread(store)
    assert first is not None and first.is_alive()  # idle, waiting for the next reply
    cw.add_prompt("again")
    assert cw.call().text == "b"
    assert heartbeat_thread(store) is first and first.is_alive()
    store.close()  # closing ends it at once, lingering or not
    assert not first.is_alive()


def test_a_reply_whose_begin_waited_for_a_hot_context_keeps_its_lease(pg_url: str) -> None:
    """A reply that waited longer than ``lease_ttl`` for its context's lock (other writers
    in a hot context) took its lease once it had the lock: it streams and is stored whole.

    The heartbeat counted the lease from before that wait, so it gave the reply up at its
    first look (cut after its first chunk, ``OwnershipLost``), or at the commit: the
    ``-m faults`` hot-context run stored a reply the model sent whole as its first chunk."""
    store = rxcontext.open(pg_url, lease_ttl=TTL)
    model = PausingModel([T("a")], [T("b"), DONE])
    cw = window(store, model)
    sub = Subscriber()
    with psycopg.connect(pg_url) as hot:  # another writer holds the context
        hot.execute("SELECT 1 FROM contexts WHERE id = %s FOR NO KEY UPDATE", (cw.context_id,))
        driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(sub))
        deadline = time.monotonic() + WAIT
        while not hot.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone():
            assert time.monotonic() < deadline, "the reply's begin never waited for the lock"
            threading.Event().wait(0.01)
        # Its lease is what is being timed here: hold the lock past lease_ttl.
        held_until = time.monotonic() + 1.2 * TTL
        while time.monotonic() < held_until:
            threading.Event().wait(0.01)
        hot.rollback()
    assert model.paused.wait(WAIT)
    rounds(store, 2)  # the heartbeat looked at the reply (and fenced it, before the fix)
    model.go.set()
    assert sub.ended.wait(WAIT)
    driver.join(WAIT)
    assert sub.error is None and sub.completed, sub.error
    assert [r.content for r in store.records(cw.context_id)] == ["hi", "ab"]
    store.close()
