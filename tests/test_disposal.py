"""Disposal, cancellation and interference, exactly: every RxPY scheduler, dispose from
another thread (many trials), a cancelled asyncio consumer, a context deleted mid-reply,
and another process holding the database's write lock."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from reactivex import operators as ops
from reactivex.scheduler import (
    CurrentThreadScheduler,
    EventLoopScheduler,
    HistoricalScheduler,
    ImmediateScheduler,
    NewThreadScheduler,
    ThreadPoolScheduler,
    TimeoutScheduler,
    TrampolineScheduler,
    VirtualTimeScheduler,
)
from reactivex.scheduler.eventloop import AsyncIOScheduler, AsyncIOThreadSafeScheduler
from reactivex.testing import TestScheduler
from replay import Replay, pieces, sse

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextNotFound,
    ContextWindow,
    RecordType,
    SQLiteStore,
    StoreBusy,
)
from rxcontext import operators as rxops
from rxcontext.providers import OpenAIModel, ScriptedModel
from rxcontext.providers.base import Request

N = 400  # chunks in the reply: far more than any test lets through

_opened: list[rxcontext.Store] = []


def memory_store() -> rxcontext.Store:
    """An in-memory store, closed after the test (:func:`close_stores`)."""
    store = rxcontext.open(":memory:")
    _opened.append(store)
    return store


@pytest.fixture(autouse=True)
def close_stores() -> Iterator[None]:
    """Close the stores the test opened: left open, each kept its checkpointer's and its
    heartbeat's threads waking (hundreds of them, this module's parametrised tests) until
    they were collected, allocating beside the tests that ran next in the process."""
    yield
    while _opened:
        _opened.pop().close()


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


class Watched(ScriptedModel):
    """A ScriptedModel that says when its stream was closed (the producer has stopped)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped = threading.Event()

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        try:
            yield from super().iter_chunks(request)
        finally:
            self.stopped.set()


class HeldAtEnd(Watched):
    """A Watched whose stream reads its last text chunk only once ``disposed`` is set: a
    dispose always lands before the reply can end, however late the disposing thread runs.
    Every chunk before that one comes as it would (no gate): the dispose still races them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disposed = threading.Event()

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        with contextlib.closing(super().iter_chunks(request)) as chunks:
            for i, chunk in enumerate(chunks):
                if i == N - 1:
                    self.disposed.wait(10)  # (a test that never disposes fails on its reply)
                yield chunk


def window(
    store: rxcontext.Store | None = None,
    delay: float = 0.0,
    *,
    model_type: type[Watched] = Watched,
    **kw: Any,
) -> tuple[ContextWindow, Watched]:
    model = model_type([[*(T(f"<{i}>") for i in range(N)), Chunk(ChunkKind.DONE)]], delay=delay)
    cw = ContextWindow(store or memory_store(), model, "d", retry=None, **kw)
    cw.add_prompt("go")
    return cw, model


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def settled(cw: ContextWindow, model: Watched, got: list[str]) -> None:
    """The producer stopped early, nothing was stored as complete, and the checkpoint is
    exactly what the subscriber got."""
    assert model.stopped.wait(10)
    assert model.closed == 1  # closed before its end: the stream really stopped
    assert replies(cw) == []
    (cp,) = cw.checkpoints()
    assert cp.text == "".join(got) and cp.chunks == len(got)
    assert 0 < len(got) < N


# -- every scheduler RxPY ships ----------------------------------------------------------------

THREADED = {
    "new-thread": NewThreadScheduler,
    "thread-pool": lambda: ThreadPoolScheduler(2),
    "event-loop": EventLoopScheduler,
    "timeout": TimeoutScheduler,
}


@pytest.mark.parametrize("how", ["subscribe_on", "subscribe(scheduler=)"])
@pytest.mark.parametrize("name", sorted(THREADED))
def test_dispose_from_the_subscribing_thread_stops_a_producer_on_another_thread(name, how):
    scheduler = THREADED[name]()
    cw, model = window()
    got: list[str] = []
    reached, disposed = threading.Event(), threading.Event()

    def on_next(chunk: Chunk) -> None:
        got.append(chunk.text)
        if len(got) == 5:
            reached.set()
            assert disposed.wait(10)  # hold the producer until the dispose is done

    if how == "subscribe_on":
        sub = cw.stream().pipe(ops.subscribe_on(scheduler)).subscribe(on_next)
    else:
        sub = cw.stream().subscribe(on_next, scheduler=scheduler)
    assert reached.wait(10)
    sub.dispose()
    disposed.set()
    settled(cw, model, got)
    assert len(got) == 5


@pytest.mark.parametrize(
    "make",
    [
        ImmediateScheduler,
        CurrentThreadScheduler,
        TrampolineScheduler,
        TestScheduler,
        VirtualTimeScheduler,
        HistoricalScheduler,
    ],
    ids=lambda c: c.__name__,
)
def test_take_on_a_scheduler_of_this_thread_stops_the_producer(make):
    scheduler = make()
    cw, model = window()
    got: list[str] = []
    cw.stream().pipe(ops.subscribe_on(scheduler), ops.take(5)).subscribe(
        lambda c: got.append(c.text)
    )
    if isinstance(scheduler, VirtualTimeScheduler):
        scheduler.start()
    settled(cw, model, got)
    assert len(got) == 5


@pytest.mark.parametrize("make", [AsyncIOScheduler, AsyncIOThreadSafeScheduler])
def test_take_on_an_asyncio_scheduler_stops_the_producer(make):
    cw, model = window()
    got: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        cw.stream().pipe(ops.subscribe_on(make(loop)), ops.take(5)).subscribe(
            lambda c: got.append(c.text), on_completed=done.set
        )
        await asyncio.wait_for(done.wait(), 10)

    asyncio.run(main())
    settled(cw, model, got)


MAINLOOP = {
    "GtkScheduler": "gi",
    "PyGameScheduler": "pygame",
    "QtScheduler": "PySide6",
    "TkinterScheduler": "_tkinter",
    "WxScheduler": "wx",
    "EventletScheduler": "eventlet",
    "GEventScheduler": "gevent",
    "IOLoopScheduler": "tornado",
    "TwistedScheduler": "twisted",
}


@pytest.mark.parametrize("name", sorted(MAINLOOP))
def test_schedulers_of_other_event_loops_are_not_installed_here(name):
    # They drive the same producer through the same schedule() call as the ones above;
    # this machine has none of their event loops, so they cannot be exercised here.
    if name == "TkinterScheduler":
        pytest.skip("TkinterScheduler needs a Tk main loop on a display; this machine has none")
    if importlib.util.find_spec(MAINLOOP[name]) is not None:  # pragma: no cover
        pytest.fail(f"{MAINLOOP[name]} is installed: test {name} like the threaded ones")
    pytest.skip(f"{name} needs {MAINLOOP[name]}, which is not installed")


# -- operators between stream() and subscribe_on, over the real OpenAI SDK ----------------------
#
# An operator's on_next is a closure that calls the next observer, not a bound method:
# the producer must look through it to the user's own observer, which is the one a take(n)
# or a dispose stops (subscribe_on hands the dispose to its scheduler, behind the producer).

WORDS = 40
KEY = "sk-test-RXCONTEXT0123456789secret"


def chat_stream(words: int) -> bytes:
    """A Chat Completions stream of ``words`` text deltas, then its end and usage."""

    def event(**fields: Any) -> dict[str, Any]:
        return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", **fields}

    def delta(content: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return event(choices=[{"index": 0, "delta": content, "finish_reason": finish}])

    texts = [delta({"role": "assistant", "content": "w0 "})]
    texts += [delta({"content": f"w{i} "}) for i in range(1, words)]
    usage = {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words}
    return sse(*texts, delta({}, "stop"), event(choices=[], usage=usage), "[DONE]")


class Served(Replay):
    """A replay that says when the SDK closed its response stream (the producer let go)."""

    def __init__(self, *responses: Any) -> None:
        self.let_go = threading.Event()
        self._closed = 0
        super().__init__(*responses)

    @property
    def closed(self) -> int:  # type: ignore[override]
        return self._closed

    @closed.setter
    def closed(self, count: int) -> None:
        self._closed = count
        if count:
            self.let_go.set()


def openai_window() -> tuple[ContextWindow, Served]:
    replay = Served(chat_stream(WORDS))
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    cw = ContextWindow(memory_store(), OpenAIModel("m", client=client), "op", retry=None)
    cw.add_prompt("count")
    return cw, replay


def let_go(
    cw: ContextWindow, replay: Served, got: list[str], received: Callable[[list[str]], str]
) -> None:
    """The HTTP stream was closed before its end, nothing was stored as complete, and the
    checkpoint is exactly what the user received through the operators."""
    assert replay.let_go.wait(10)
    assert replay.closed == 1
    assert replay.delivered < len(pieces(chat_stream(WORDS)))
    assert replies(cw) == []
    (cp,) = cw.checkpoints()
    assert len(got) == 5 and cp.text == received(got)


def _joined(got: list[str]) -> str:
    return "".join(got)


def _last(got: list[str]) -> str:
    return got[-1]


def json_piece(text: str) -> str:
    """``text`` as a piece of a JSON string's body."""
    return json.dumps(text)[1:-1]


PIPES: dict[str, tuple[Callable[[], list[Any]], Callable[[list[str]], str]]] = {
    "text": (lambda: [rxops.text()], _joined),
    "map": (lambda: [ops.map(lambda c: c.text)], _joined),
    "accumulate": (lambda: [rxops.accumulate(), ops.map(lambda r: r.text)], _last),
    # The reply's text as one JSON string growing: each partial value is the text so far.
    "partial_objects": (
        lambda: [rxops.text(), ops.map(json_piece), ops.start_with('"'), rxops.partial_objects()],
        _last,
    ),
    "middleware-filter-map": (
        lambda: [
            rxops.middleware(on_chunk=lambda c: None),
            ops.filter(lambda c: c.kind is ChunkKind.TEXT),
            ops.map(lambda c: c.text),
        ],
        _joined,
    ),
}
ELSEWHERE: dict[str, Callable[[], Any]] = {
    "new-thread": NewThreadScheduler,
    "thread-pool": lambda: ThreadPoolScheduler(2),
    "event-loop": EventLoopScheduler,
}


@pytest.mark.parametrize("pipe", sorted(PIPES))
@pytest.mark.parametrize("how", ["take", "dispose"])
@pytest.mark.parametrize("where", ["test", "asyncio"])
def test_operators_before_subscribe_on_this_thread_still_let_the_user_stop_it(where, how, pipe):
    operators, received = PIPES[pipe]
    cw, replay = openai_window()
    got: list[str] = []
    subs: list[Any] = []

    def on_next(value: str) -> None:
        got.append(value)
        if how == "dispose" and len(got) == 5:
            subs[0].dispose()

    def subscribe(scheduler: Any) -> None:
        tail = [ops.take(5)] if how == "take" else []
        chunks = cw.stream().pipe(*operators(), ops.subscribe_on(scheduler), *tail)
        subs.append(chunks.subscribe(on_next))

    if where == "test":
        scheduler = TestScheduler()
        subscribe(scheduler)
        scheduler.start()
    else:

        async def main() -> None:
            subscribe(AsyncIOScheduler(asyncio.get_running_loop()))
            assert await asyncio.to_thread(replay.let_go.wait, 10)

        asyncio.run(main())
    let_go(cw, replay, got, received)


@pytest.mark.parametrize("pipe", sorted(PIPES))
@pytest.mark.parametrize("how", ["take", "dispose"])
@pytest.mark.parametrize("name", sorted(ELSEWHERE))
def test_operators_before_subscribe_on_a_thread_still_let_the_user_stop_it(name, how, pipe):
    operators, received = PIPES[pipe]
    cw, replay = openai_window()
    got: list[str] = []
    reached, disposed = threading.Event(), threading.Event()

    def on_next(value: str) -> None:
        got.append(value)
        if how == "dispose" and len(got) == 5:
            reached.set()
            assert disposed.wait(10)  # hold the producer until the dispose is done

    tail = [ops.take(5)] if how == "take" else []
    chunks = cw.stream().pipe(*operators(), ops.subscribe_on(ELSEWHERE[name]()), *tail)
    sub = chunks.subscribe(on_next)
    if how == "dispose":
        assert reached.wait(10)
        sub.dispose()
        disposed.set()
    let_go(cw, replay, got, received)


def test_a_group_still_subscribed_gets_the_whole_reply_after_group_by_s_subscriber_left():
    # group_by keeps its source for its groups (a RefCountDisposable): its own subscriber
    # stopping (take(1) after the first group) is no reason to stop the reply.
    cw, replay = openai_window()
    got: list[str] = []

    def on_group(group: Any) -> None:
        group.subscribe(lambda chunk: got.append(chunk.text))

    cw.stream().pipe(ops.group_by(lambda chunk: chunk.kind), ops.take(1)).subscribe(on_group)
    assert replay.delivered == len(pieces(chat_stream(WORDS)))
    assert replies(cw) == ["".join(got)] == ["".join(f"w{i} " for i in range(WORDS))]
    assert cw.checkpoints() == []


# -- dispose from another thread, racing the producer -------------------------------------------


def test_dispose_from_another_thread_at_random_moments_keeps_the_checkpoint_exact():
    rng = random.Random(7)
    pool = ThreadPoolScheduler(1)
    for _ in range(150):
        # A chunk every 0.1 ms: the dispose lands mid-stream, between or during deliveries.
        # A disposing thread starved past the other ~40 ms (a loaded machine) would find the
        # reply completed and nothing to checkpoint: the model holds its last chunk for it.
        cw, model = window(delay=0.0001, model_type=HeldAtEnd)
        assert isinstance(model, HeldAtEnd)
        got: list[str] = []
        enough = threading.Event()
        wanted = rng.randrange(1, 40)

        def on_next(chunk: Chunk, got: list[str] = got, enough: threading.Event = enough) -> None:
            got.append(chunk.text)
            if len(got) >= wanted:  # noqa: B023 (this trial's)
                enough.set()

        sub = cw.stream().subscribe(on_next, scheduler=pool)
        assert enough.wait(10)
        sub.dispose()  # the producer is still delivering (or waits for its last chunk)
        model.disposed.set()
        assert model.stopped.wait(10)
        assert replies(cw) == [] and len(got) < N
        (cp,) = cw.checkpoints()
        assert cp.text == "".join(got), (len(cp.text), len("".join(got)))


# -- a cancelled asyncio consumer ----------------------------------------------------------------


@pytest.mark.parametrize("closing", ["aclosing", "dropped"])
def test_a_consumer_cancelled_while_it_awaits_finds_its_checkpoint_saved(closing: str):
    cw, _ = window()
    got: list[str] = []

    async def main() -> None:
        started = asyncio.Event()
        stream = cw.astream()

        async def read() -> None:
            async for chunk in stream:
                got.append(chunk.text)
                if len(got) == 3:
                    started.set()
                    await asyncio.Event().wait()  # the loop body awaits, forever

        async def consume() -> None:
            if closing == "aclosing":
                async with contextlib.aclosing(stream):
                    await read()
            else:
                await read()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if closing == "dropped":
            # Saved as the task ended, in a worker thread (never on the loop): closing the
            # stream waits for it.
            await stream.aclose()
        # (closed by aclosing: right after the cancellation reached us)
        assert [cp.text for cp in cw.checkpoints()] == ["".join(got)]

    asyncio.run(main())
    assert replies(cw) == []


# -- a context deleted while its reply streams --------------------------------------------------


@pytest.mark.parametrize("where", ["this-thread", "worker-thread"])
def test_deleting_the_context_mid_reply_ends_the_stream_with_a_clear_error(where):
    store = memory_store()
    cw, _ = window(store)
    other = ContextWindow(store, None, "elsewhere")

    def delete(chunk: Chunk) -> None:
        if chunk.text == "<3>":
            other.delete_context("d")

    ended = threading.Event()
    errors: list[Exception] = []

    def on_error(e: Exception) -> None:
        errors.append(e)
        ended.set()

    obs = cw.stream(rxops.middleware(on_chunk=delete))
    if where == "this-thread":
        obs.subscribe(lambda c: None, on_error, ended.set)
    else:
        obs.subscribe(lambda c: None, on_error, ended.set, scheduler=ThreadPoolScheduler(1))
    assert ended.wait(10), "no terminal event"
    (error,) = errors
    assert isinstance(error, ContextNotFound) and "deleted" in str(error)


# -- another process holds the write lock ------------------------------------------------------


@pytest.fixture
def locked_store(tmp_path: Path) -> Iterator[tuple[SQLiteStore, sqlite3.Connection]]:
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.3)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    yield store, other
    other.close()
    store.close()


def test_a_locked_database_defers_checkpoints_and_the_reply_streams_on(locked_store):
    store, other = locked_store
    ts = TestScheduler()
    model = ScriptedModel([[*(T(f"<{i}>") for i in range(30)), Chunk(ChunkKind.DONE)]])
    cw = ContextWindow(store, model, "d", retry=None, checkpoint_every=1.0, scheduler=ts)
    cw.add_prompt("go")
    seen: list[int] = []
    parts: list[int] = []

    def step(chunk: Chunk) -> None:
        if chunk.text == "<5>":
            other.execute("BEGIN IMMEDIATE")  # another process takes the write lock
        ts.advance_by(1.0)  # a periodic write is due: it must give up, not block or fail
        parts.append(other.execute("SELECT COUNT(*) FROM checkpoint_parts").fetchone()[0])
        if chunk.text == "<25>":
            other.execute("COMMIT")  # ... and lets go before the reply ends
        seen.append(len(seen))

    reply = cw.call(rxops.middleware(on_chunk=step))
    assert reply.text == "".join(f"<{i}>" for i in range(30))
    assert len(seen) == 31  # every chunk went through
    # Checkpoints were written before the lock, none while it was held, and again after.
    assert parts[4] >= 1
    assert len(set(parts[6:25])) == 1
    assert replies(cw) == [reply.text] and cw.checkpoints() == []


def test_a_lock_held_past_the_commit_wait_ends_with_a_clear_error(locked_store):
    store, other = locked_store
    cw, _ = window(store)

    def lock_it(chunk: Chunk) -> None:
        if chunk.text == "<5>":
            other.execute("BEGIN IMMEDIATE")

    errors: list[Exception] = []
    got: list[str] = []
    cw.stream(rxops.middleware(on_chunk=lock_it)).subscribe(
        lambda c: got.append(c.text), errors.append
    )
    (error,) = errors
    assert isinstance(error, StoreBusy) and "locked by another process" in str(error)
    assert len(got) == N + 1  # the reply streamed to the end; only its commit had to wait
    other.execute("ROLLBACK")
    assert replies(cw) == []
