"""cw.stream() / call() / astream() / acall(): persistence, checkpoints, cancellation, resume."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.scheduler import ThreadPoolScheduler
from reactivex.testing import TestScheduler
from stores import open_store, scalar

import rxcontext
from rxcontext import (
    CheckpointNotFound,
    CheckpointResolved,
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    Reply,
    ReplyBusy,
    StreamInterrupted,
    Usage,
)
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder
from rxcontext.cost import context_cost
from rxcontext.providers import ScriptedModel
from rxcontext.providers.base import reply_from_chunks
from rxcontext.store.owner import worker_id

pytestmark = pytest.mark.usefixtures("both_stores")


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop", response_id="resp_1")


def window(*scripts, **kwargs) -> tuple[ContextWindow, ScriptedModel]:
    model = ScriptedModel(list(scripts))
    cw = ContextWindow(open_store(), model, "t", **kwargs)
    cw.add_prompt("hi")
    return cw, model


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


class Recorder:
    def __init__(self) -> None:
        self.items: list[Chunk] = []
        self.error: Exception | None = None
        self.completed = False

    def subscribe(self, obs: reactivex.Observable[Chunk]) -> Recorder:
        obs.subscribe(self.items.append, self._error, self._done)
        return self

    def _error(self, e: Exception) -> None:
        self.error = e

    def _done(self) -> None:
        self.completed = True

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.items if c.kind is ChunkKind.TEXT)


# -- completion -------------------------------------------------------------------------


def test_reply_is_stored_before_on_completed_reaches_subscribers():
    cw, _ = window([T("Hel"), T("lo"), Chunk(ChunkKind.USAGE, usage=Usage.of(3, 2)), DONE])
    seen_at_completion: list[list[str]] = []
    got: list[str] = []
    cw.stream().pipe(rxops.text()).subscribe(
        got.append, on_completed=lambda: seen_at_completion.append(replies(cw))
    )
    assert got == ["Hel", "lo"]
    assert seen_at_completion == [["Hello"]]
    rec = cw.live_records()[-1]
    assert rec.type is RecordType.MODEL_RESP and rec.streamed and rec.response_id == "resp_1"
    assert cw.stats().usage == Usage.of(3, 2)
    assert cw.context.last_response_id == "resp_1"
    assert cw.checkpoints() == []


def test_stream_is_cold_and_builds_the_request_at_subscription():
    cw, model = window([T("a"), DONE], [T("b"), DONE])
    obs = cw.stream()
    assert model.requests == []  # nothing sent before subscribe
    cw.add_prompt("second prompt, added after stream() but before subscribe")
    obs.subscribe()
    obs.subscribe()
    assert len(model.requests) == 2
    first = [r.content for r in model.requests[0].records]
    assert first[-1].startswith("second prompt")
    # The second subscription sees the first one's stored reply.
    assert [r.content for r in model.requests[1].records][-1] == "a"
    assert replies(cw) == ["a", "b"]


def test_call_returns_the_reduced_reply_and_matches_the_operator():
    script = [T("x"), Chunk(ChunkKind.THINKING, "hmm"), T("y"), DONE]
    cw, _ = window(script, script)
    reply = cw.call()
    streamed = cw.stream().pipe(rxops.reduce_reply()).run()
    assert reply == streamed
    assert reply.text == "xy" and reply.thinking == "hmm" and reply.finish_reason == "stop"
    assert cw.live_records()[-1].metadata["thinking"] == "hmm"


def test_non_streaming_call_gives_the_same_reply_and_marks_it_not_streamed():
    script = [T("x"), T("y"), Chunk(ChunkKind.USAGE, usage=Usage.of(1, 2)), DONE]
    cw, _ = window(script, script)
    assert cw.call(stream=False) == cw.call(stream=True)
    kinds = [r.streamed for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert kinds == [False, True]


# -- errors and cancellation --------------------------------------------------------------


def test_error_saves_exactly_the_delivered_text_before_on_error():
    cause = ConnectionError("reset")
    cw, _ = window([T("par"), T("tial"), cause])
    at_error: list[int] = []
    rec = Recorder()
    cw.stream().subscribe(
        rec.items.append, lambda e: (at_error.append(len(cw.checkpoints())), rec._error(e))
    )
    assert isinstance(rec.error, StreamInterrupted)
    assert rec.error.__cause__ is cause
    cp = rec.error.checkpoint
    assert at_error == [1]
    assert cp.text == "partial" == rec.text
    assert cp.error == "ConnectionError: reset"
    assert cw.checkpoints() == [cp]
    assert replies(cw) == []  # nothing stored as a reply


def test_call_raises_stream_interrupted_with_the_checkpoint():
    cw, _ = window([T("a"), RuntimeError("boom")])
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert info.value.checkpoint.text == "a"
    assert isinstance(info.value.__cause__, RuntimeError)


@settings(max_examples=40, deadline=None)
@given(
    parts=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=12),
    data=st.data(),
)
def test_disposing_after_k_chunks_checkpoints_exactly_k_chunks(parts, data):
    k = data.draw(st.integers(min_value=1, max_value=len(parts)))
    cw, model = window([*(T(p) for p in parts), DONE])
    got: list[Chunk] = []
    cw.stream().pipe(ops.take(k)).subscribe(got.append)
    assert len(got) == k
    if k <= len(parts):
        (cp,) = cw.checkpoints()
        assert cp.text == "".join(parts[:k])
        assert cp.chunks == k
        assert cp.error == "cancelled"
        assert model.closed == 1  # the provider stream was closed
        assert replies(cw) == []


def _long_script() -> list[Chunk]:
    """Text deltas past two of the builder's block joins (256 deltas each), with an empty
    delta, text that carries metadata, and reasoning between them."""
    chunks = [T(f"{i % 10}") for i in range(600)]
    chunks[3] = T("")
    chunks[254] = Chunk(ChunkKind.TEXT, "m", metadata={"citations": [1]})
    chunks[300] = Chunk(ChunkKind.THINKING, "hmm")
    return [*chunks, DONE]


@pytest.mark.parametrize("k", [1, 2, 255, 256, 257, 258, 300, 512, 513, 600])
def test_the_sync_drivers_own_text_fold_checkpoints_exactly_k_chunks(k: int) -> None:
    """The sync driver folds most text deltas itself (one call less a chunk): what it
    folds is what the builder folds, across its block joins."""
    script = _long_script()
    cw, _ = window(script)
    got: list[Chunk] = []
    cw.stream().pipe(ops.take(k)).subscribe(got.append)
    assert got == script[:k]
    (cp,) = cw.checkpoints()
    want = ReplyBuilder()
    for chunk in script[:k]:
        want.add(chunk)
    assert cp.text == want.text == "".join(c.text for c in got if c.kind is ChunkKind.TEXT)
    assert cp.chunks == k
    assert cp.thinking == want.thinking


def test_the_sync_drivers_own_text_fold_stores_the_whole_reply() -> None:
    script = _long_script()
    cw, _ = window(script)
    reply = cw.call()
    want = reply_from_chunks(script)
    assert reply.text == want.text
    assert reply.metadata == want.metadata == {"citations": [1]}
    assert replies(cw) == [want.text]


def test_dispose_from_another_thread_stops_and_checkpoints():
    release = threading.Event()
    emitted = threading.Event()
    seen: list[str] = []

    def gate(chunk: Chunk) -> None:
        if chunk.text == "b":  # the hook runs before "b" reaches the subscriber
            emitted.set()
            release.wait(5)

    cw, _ = window([T("a"), T("b"), T("c"), DONE])
    done = threading.Event()
    producer = ThreadPoolScheduler(max_workers=1)
    sub = cw.stream(rxops.middleware(on_chunk=gate)).subscribe(
        lambda c: seen.append(c.text),
        on_completed=done.set,
        on_error=lambda e: done.set(),
        scheduler=producer,
    )
    assert emitted.wait(5)
    sub.dispose()
    # The dispose saved the checkpoint itself (the producer was not delivering a chunk):
    # exactly what the subscriber had, before the producer even wakes up.
    (cp,) = cw.checkpoints()
    assert cp.text == "".join(seen) == "a"
    release.set()
    producer.executor.shutdown(wait=True)
    assert seen == ["a"] and not done.is_set()
    assert [c.text for c in cw.checkpoints()] == ["a"]


def test_a_raising_middleware_hook_interrupts_with_a_checkpoint_chained_to_it():
    hook_error = ValueError("hook failed")

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "c":
            raise hook_error

    cw, model = window([T("a"), T("b"), T("c"), T("d"), DONE])
    rec = Recorder().subscribe(cw.stream(rxops.middleware(on_chunk=on_chunk)))
    assert isinstance(rec.error, StreamInterrupted)
    assert rec.error.__cause__ is hook_error
    assert rec.error.checkpoint.text == "ab" == rec.text
    assert model.closed == 1


@pytest.mark.parametrize("path", ["sync", "async"])
def test_an_on_error_hook_that_raises_ctrl_c_still_leaves_the_checkpoint(path: str):
    """Ctrl-C landing in an ``on_error`` hook goes on up, as any KeyboardInterrupt does,
    but only after the reply's checkpoint of what was delivered is saved: no reply is left
    streaming (its lease renewed for as long as the process lives)."""

    def on_error(error: BaseException) -> None:
        raise KeyboardInterrupt

    cw, model = window([T("Hel"), ValueError("cut")], retry=None)
    hook = rxops.middleware(on_error=on_error)
    with pytest.raises(KeyboardInterrupt):
        if path == "sync":
            cw.call(hook)
        else:
            asyncio.run(cw.acall(hook))
    assert cw.active_replies() == []
    (cp,) = cw.checkpoints()
    assert cp.text == "Hel" and cp.state is rxcontext.ReplyState.INTERRUPTED
    assert model.closed == 1


@pytest.mark.parametrize("method", ["call", "acall", "astream", "resume_call", "aresume"])
def test_a_hook_that_is_not_middleware_is_refused_before_anything_is_stored(method: str):
    """``call()`` and its kin take middleware hooks; an Rx operator (which ``stream()``
    takes) is a clear TypeError at once, not an AttributeError from inside the driver with
    the reply's row left streaming."""
    cw, model = window([T("a"), DONE])
    with pytest.raises(TypeError, match="middleware") as info:
        arg = 1 if method.endswith("resume") or method == "resume_call" else None
        args = (arg,) if arg is not None else ()
        made = getattr(cw, method)(*args, rxops.text())
        if asyncio.iscoroutine(made):
            asyncio.run(made)
    assert "stream()" in str(info.value)
    assert cw.active_replies() == [] and cw.checkpoints() == [] and replies(cw) == []
    assert model.requests == []


def test_a_window_refuses_middleware_that_is_not_middleware():
    with pytest.raises(TypeError, match="middleware"):
        ContextWindow(open_store(), ScriptedModel([]), "t", middleware=[rxops.text()])


def test_a_subscriber_that_raises_leaves_a_checkpoint_including_the_chunk_it_got():
    # The subscriber's exception is its own: raised from subscribe() as RxPY's own sources
    # do, never handed to on_error as the stream's failure, never stored as its error.
    cw, model = window([T("a"), T("b"), T("c"), DONE])
    broke = KeyError("ui broke")

    def on_next(c: Chunk) -> None:
        if c.text == "b":
            raise broke

    errors: list[Exception] = []
    with pytest.raises(KeyError) as info:
        cw.stream().subscribe(on_next, errors.append)
    assert info.value is broke and errors == []
    (cp,) = cw.checkpoints()
    assert cp.text == "ab" and "KeyError" not in (cp.error or "")
    assert model.closed == 1


def test_store_closed_is_a_clear_error():
    cw, _ = window([T("a"), DONE])
    cw.store.close()
    with pytest.raises(rxcontext.StoreClosedError):
        cw.call()


def test_window_without_a_model_says_so():
    cw = ContextWindow(open_store())
    with pytest.raises(rxcontext.RxContextError, match="no model"):
        cw.stream()


# -- periodic checkpoints ---------------------------------------------------------------


def test_periodic_checkpoints_follow_the_timer_and_go_away_on_completion():
    # Ticks come from the scheduler's clock, not from chunks: time passes inside a hook
    # (between two chunks, as in a pause) and the checkpoint holds what was delivered.
    ts = TestScheduler()
    model = ScriptedModel([[T("a"), T("b"), T("c"), T("d"), DONE]])
    cw = ContextWindow(open_store(), model, "p", checkpoint_every=1.0, scheduler=ts)
    cw.add_prompt("go")
    seen: list[list[tuple[int, str]]] = []

    def tick(chunk: Chunk) -> None:
        seen.append([(cp.id, cp.text) for cp in cw.active_replies()])
        ts.advance_by(0.6)

    cw.call(rxops.middleware(on_chunk=tick))
    assert [[text for _, text in snap] for snap in seen] == [[""], [""], ["a"], ["a"], ["abc"]]
    assert len({cp_id for snap in seen for cp_id, _ in snap}) == 1  # one row, written in place
    assert cw.checkpoints() == [] == cw.active_replies()
    assert replies(cw) == ["abcd"]


def test_a_pause_with_nothing_new_writes_nothing():
    ts = TestScheduler()
    store = open_store()
    model = ScriptedModel([[T("a"), T("b"), DONE]])
    cw = ContextWindow(store, model, "p", checkpoint_every=1.0, scheduler=ts)
    cw.add_prompt("go")
    parts: list[int] = []

    def pause(chunk: Chunk) -> None:
        if chunk.text == "b":
            for _ in range(5):  # five intervals with nothing new after the first
                ts.advance_by(1.0)
                parts.append(scalar(store, "SELECT COUNT(*) FROM checkpoint_parts"))

    cw.call(rxops.middleware(on_chunk=pause))
    assert parts == [1, 1, 1, 1, 1]


def test_periodic_checkpointing_can_be_disabled():
    ts = TestScheduler()
    model = ScriptedModel([[T("a"), T("b"), RuntimeError("x")]])
    cw = ContextWindow(open_store(), model, "p", checkpoint_every=None, scheduler=ts)
    cw.add_prompt("go")
    texts: list[str] = []

    def later(chunk: Chunk) -> None:
        ts.advance_by(5.0)
        texts.extend(cp.text for cp in cw.active_replies())

    with pytest.raises(StreamInterrupted):
        cw.call(rxops.middleware(on_chunk=later))
    assert texts == ["", ""]
    assert [cp.text for cp in cw.checkpoints()] == ["ab"]


# -- resume -------------------------------------------------------------------------------


def interrupted(cw: ContextWindow) -> int:
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    return info.value.checkpoint.id


def test_resume_stores_partial_plus_continuation_as_one_reply():
    cw, model = window([T("The quick "), ConnectionError("cut")], [T("brown fox."), DONE])
    cp_id = interrupted(cw)
    got = Recorder().subscribe(cw.resume(cp_id))
    assert got.completed and got.text == "brown fox."
    assert replies(cw) == ["The quick brown fox."]
    assert cw.checkpoints() == []
    assert cw.store.get_checkpoint(cp_id).resolved
    # The continuation request carried the partial reply as an assistant turn, then a prompt.
    last_two = model.requests[1].records[-2:]
    assert [r.type for r in last_two] == [RecordType.MODEL_RESP, RecordType.PROMPT]
    assert last_two[0].content == "The quick "


def test_resume_call_returns_the_joined_reply():
    cw, _ = window([T("one "), RuntimeError("cut")], [T("two"), DONE])
    reply = cw.resume_call(interrupted(cw))
    assert reply.text == "one two"


def test_resume_that_fails_again_updates_the_same_checkpoint():
    cw, _ = window([T("a"), RuntimeError("1")], [T("b"), RuntimeError("2")], [T("c"), DONE])
    cp_id = interrupted(cw)
    rec = Recorder().subscribe(cw.resume(cp_id))
    assert isinstance(rec.error, StreamInterrupted)
    assert rec.error.checkpoint.id == cp_id and rec.error.checkpoint.text == "ab"
    assert cw.resume_call(cp_id).text == "abc"


def test_resume_errors_are_clear():
    cw, _ = window([T("a"), RuntimeError("cut")], [T("b"), DONE])
    cp_id = interrupted(cw)
    with pytest.raises(CheckpointNotFound):
        cw.resume(999)
    cw.resume_call(cp_id)
    with pytest.raises(CheckpointResolved):
        cw.resume(cp_id)


def test_concurrent_resume_of_one_checkpoint_one_wins():
    cw, _ = window([T("a"), RuntimeError("cut")], [T("b"), DONE])
    cp_id = interrupted(cw)
    cw.store.claim_checkpoint(cp_id, owner=worker_id())  # another caller holds it
    with pytest.raises(ReplyBusy, match="being resumed") as busy:
        cw.resume_call(cp_id)
    assert isinstance(busy.value, CheckpointResolved) and busy.value.state == "resuming"


def test_checkpoint_of_another_context_is_not_resumable_here():
    cw, _ = window([T("a"), RuntimeError("cut")])
    cp_id = interrupted(cw)
    cw.switch_context("elsewhere")
    with pytest.raises(CheckpointNotFound, match="another context"):
        cw.resume(cp_id)


# -- asyncio ------------------------------------------------------------------------------


SCRIPT = [T("a"), Chunk(ChunkKind.THINKING, "t"), T("b"), DONE]


async def test_astream_yields_the_same_chunks_as_stream_and_stores_the_reply():
    cw, _ = window(SCRIPT, SCRIPT)
    sync_chunks = Recorder().subscribe(cw.stream()).items
    async_chunks = [c async for c in cw.astream()]
    assert async_chunks == sync_chunks
    assert replies(cw) == ["ab", "ab"]


async def test_acall_matches_call():
    cw, _ = window(SCRIPT, SCRIPT)
    assert await cw.acall() == cw.call()


async def test_closing_astream_early_checkpoints_what_was_consumed():
    cw, model = window([T("a"), T("b"), T("c"), DONE])
    async with contextlib.aclosing(cw.astream()) as chunks:
        async for chunk in chunks:
            if chunk.text == "b":
                break
    (cp,) = cw.checkpoints()
    assert cp.text == "ab"
    assert model.closed == 1


async def test_cancelling_the_task_checkpoints_and_closes_the_provider():
    gate = asyncio.Event()
    seen: list[str] = []

    async def consume(cw: ContextWindow) -> None:
        async for chunk in cw.astream():
            seen.append(chunk.text)
            if chunk.text == "b":
                gate.set()

    cw, model = window([T("a"), T("b"), T("c"), T("d"), DONE])
    model._delay = 0  # every chunk still yields to the loop (asyncio.sleep(0))
    task = asyncio.create_task(consume(cw))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (cp,) = cw.checkpoints()
    assert cp.text == "".join(seen)
    assert model.closed == 1


async def test_async_error_is_stream_interrupted():
    cw, _ = window([T("a"), RuntimeError("cut")])
    with pytest.raises(StreamInterrupted) as info:
        await cw.acall()
    assert info.value.checkpoint.text == "a"


async def test_many_concurrent_async_streams_into_many_contexts():
    store = open_store()
    n = 50
    windows = []
    for i in range(n):
        parts = [T(f"{i}-{j} ") for j in range(20)]
        cw = ContextWindow(store, ScriptedModel([[*parts, DONE]]), f"c{i}")
        cw.add_prompt("go")
        windows.append(cw)
    results = await asyncio.gather(*(cw.acall() for cw in windows))
    for i, (cw, reply) in enumerate(zip(windows, results, strict=True)):
        expected = "".join(f"{i}-{j} " for j in range(20))
        assert reply.text == expected
        assert replies(cw) == [expected]


def test_threads_streaming_into_one_context_never_interleave_records():
    store = open_store()
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            model = ScriptedModel([[*(T(f"{i}.{j};") for j in range(50)), DONE]])
            cw = ContextWindow(store, model, "shared")
            barrier.wait(5)
            cw.call()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cw = ContextWindow(store, None, "shared")
    stored = sorted(replies(cw))
    assert stored == sorted("".join(f"{i}.{j};" for j in range(50)) for i in range(n))


def U(inp: int, out: int) -> Chunk:
    return Chunk(ChunkKind.USAGE, usage=Usage.of(inp, out))


@pytest.mark.parametrize("settle", ["resume", "keep", "discard"])
def test_the_usage_billed_for_a_cut_attempt_is_spent_however_the_reply_is_settled(settle: str):
    """A provider bills what it sent before the cut (Anthropic reports the input's usage as
    the stream starts): the context's spent totals, and the reply that carries on, count it
    whether the reply is resumed, kept or discarded."""
    cut = [U(1000, 1), T("a"), U(1000, 50), ValueError("cut")]
    cw, _ = window(cut, [U(1000, 1), T("b"), U(1000, 10), DONE], retry=None)
    with pytest.raises(StreamInterrupted):
        cw.call()
    (cp,) = cw.checkpoints()
    assert cp.usage is not None and cp.usage.total_tokens == 1050
    assert cw.stats().usage.total_tokens == 0  # nothing settled yet
    if settle == "resume":
        reply = cw.resume_call(cp.id)
        assert reply.text == "ab" and reply.usage is not None
        assert reply.usage.total_tokens == 2060
        (stored,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        assert stored.metadata["usage"]["total_tokens"] == 2060
        assert cw.stats().usage.total_tokens == 2060
    elif settle == "keep":
        kept = cw.keep(cp.id)
        assert kept.metadata["partial"] is True
        assert kept.metadata["usage"]["total_tokens"] == 1050
        assert cw.stats().usage.total_tokens == 1050
        # Billed, of no known price (no model recorded): unknown, never free.
        assert context_cost(cw.records()).describe() == "unknown"
    else:
        cw.discard(cp.id)
        assert cw.stats().usage.total_tokens == 1050
        assert cw.stats().usage.input_tokens == 1000


def test_a_resume_cut_again_keeps_the_first_attempts_usage_in_its_checkpoint():
    cw, _ = window(
        [U(1000, 1), T("a"), U(1000, 50), ValueError("cut")],
        [U(1000, 1), T("b"), U(1000, 5), ValueError("cut again")],
        retry=None,
    )
    with pytest.raises(StreamInterrupted):
        cw.call()
    (cp,) = cw.checkpoints()
    with pytest.raises(StreamInterrupted):
        cw.resume_call(cp.id)
    (again,) = cw.checkpoints()
    assert again.text == "ab"
    assert again.usage is not None and again.usage.total_tokens == 1050 + 1005
    cw.discard(again.id)
    assert cw.stats().usage.total_tokens == 2055


def test_reply_value_is_plain_and_frozen():
    cw, _ = window([T("a"), DONE])
    reply = cw.call()
    assert isinstance(reply, Reply)
    with pytest.raises(AttributeError):
        reply.text = "b"  # type: ignore[misc]


def test_resuming_an_empty_checkpoint_resends_the_original_request():
    cw, model = window([RuntimeError("no bytes at all")], [T("whole"), DONE])
    cp_id = interrupted(cw)
    assert cw.store.get_checkpoint(cp_id).text == ""
    assert cw.resume_call(cp_id).text == "whole"
    assert [r.content for r in model.requests[1].records] == ["hi"]


class _Blip(ConnectionError):
    """A transient error the default retry policy sends the request again for."""


@pytest.mark.parametrize("path", ["untimed", "timed", "async"])
def test_a_driver_write_failing_after_the_first_chunk_does_not_send_the_request_again(
    path: str,
) -> None:
    # The first chunk reached the subscriber; then the driver's own checkpoint write
    # (attend: a write the timer handed it) fails with a transient error. The round is
    # not sent again (its text would reach the subscriber twice, and be stored twice), on
    # both sync loops and on asyncio alike: the reply ends interrupted, holding "a".
    from rxcontext import RetryPolicy, StreamInterrupted, Timeouts
    from rxcontext.checkpointer import checkpointer_for

    timed = {"timeouts": Timeouts(first_chunk=30, idle=30)} if path == "timed" else {}
    script = [T("a"), T("b"), DONE]
    cw, model = window(
        script,
        script,
        checkpoint_every=3600.0,
        retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0),
        **timed,
    )
    store = cw.store
    seen: list[str] = []

    def on_chunk(chunk: Chunk) -> None:
        if not seen:  # the timer asks the driver to write once this chunk is folded
            (p,) = checkpointer_for(store, 3600.0)._replies.values()
            real = p.attend

            def attend() -> None:
                p.attend = real
                p.attention = False
                raise _Blip("the store's connection dropped")

            p.attend = attend
            p.attention = True
        seen.append(chunk.text)

    hook = rxops.middleware(on_chunk=on_chunk)
    with pytest.raises(StreamInterrupted) as caught:
        if path == "async":
            asyncio.run(cw.acall(hook))
        else:
            cw.call(hook)
    assert len(model.requests) == 1
    assert seen == ["a"]
    assert caught.value.checkpoint is not None
    assert caught.value.checkpoint.text == "a"
