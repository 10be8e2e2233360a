"""An ``astream`` left early closes the async generators it started, with the response.

An async generator that is dropped while suspended is not closed on the spot: the event loop's
finalizer hook schedules its ``aclose()`` as a task. If the loop stops first (a loop run with
``run_until_complete`` and then closed, as many apps and test runners do), that task is
destroyed pending and asyncio prints "Task was destroyed but it is pending!". So the fast
wire closes every generator it starts (its SSE reader, the response's byte iterator) itself.
On ``wire="sdk"`` the SDK's own generators are the SDK's: a bare ``async for`` over its
stream, closed early, leaves the same ones; none of rxcontext's is left there either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from crafted_text import KINDS, text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import ChunkKind, ContextWindow, RecordType, StreamInterrupted

OURS = str(Path(rxcontext.__file__).parent)


def left_for_the_loop(kind: str, wire: str, tmp_path: Path) -> tuple[list[Any], Replay]:
    """The async generators the loop was left to finalize after an early ``aclose()``."""
    replay = Replay(text_body(kind, ["one ", "two ", "three ", "four"]))
    with rxcontext.open(tmp_path / "close.db") as store:
        cw = ContextWindow(store, model_for(kind, replay, wire), "close")
        cw.add_prompt("hi")
        left: list[Any] = []

        async def main() -> None:
            hooks = sys.get_asyncgen_hooks()  # the running loop's

            def finalizer(agen: Any) -> None:
                left.append(agen.ag_code)
                assert hooks.finalizer is not None
                hooks.finalizer(agen)

            sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
            stream = cw.astream()
            async for chunk in stream:
                if chunk.kind is ChunkKind.TEXT:
                    break
            await stream.aclose()  # type: ignore[attr-defined]
            gc.collect()

        asyncio.run(main())
        assert [c.text for c in cw.checkpoints()] == ["one "]  # what was delivered, kept
    return left, replay


@pytest.mark.parametrize("kind", KINDS)
def test_the_fast_wire_leaves_no_generator_for_the_loop(kind: str, tmp_path: Path) -> None:
    left, replay = left_for_the_loop(kind, "fast", tmp_path)
    assert replay.closed == 1
    assert [f"{c.co_filename}:{c.co_qualname}" for c in left] == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_sdk_wire_leaves_none_of_ours(kind: str, tmp_path: Path) -> None:
    left, replay = left_for_the_loop(kind, "sdk", tmp_path)
    assert replay.closed == 1
    assert [c.co_qualname for c in left if c.co_filename.startswith(OURS)] == []


async def _until(done: Any, wait: float = 10.0) -> bool:
    """Let the loop run (no sleep on a clock) until ``done()``, for at most ``wait`` seconds
    (a bound for failing only: the close waits for the checkpoint's write, in a thread)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    while loop.time() < give_up:
        if done():
            return True
        await asyncio.sleep(0)
    return bool(done())


@pytest.mark.parametrize("exit_by", ["break", "raise", "cancel"])
@pytest.mark.parametrize("wire", ["fast", "sdk"])
def test_an_astream_dropped_without_aclose_is_closed_while_the_loop_runs(
    exit_by: str, wire: str, tmp_path: Path
) -> None:
    """A consumer that leaves ``async for`` without closing the iterator (a plain ``break``,
    its own exception, its task cancelled) drops it: the loop must close it soon after, as
    it does any async generator, while the app goes on running. Nothing may keep it alive:
    until then its HTTP response stays open (the provider goes on generating) and its
    reply stays registered for lease renewals and periodic checkpoints."""
    replay = Replay(text_body("chat", ["one ", "two ", "three ", "four"]))
    with rxcontext.open(tmp_path / "drop.db") as store:
        cw = ContextWindow(store, model_for("chat", replay, wire), "drop")
        cw.add_prompt("hi")
        holding = asyncio.Event()

        async def consumer() -> None:
            async for chunk in cw.astream():
                if chunk.kind is ChunkKind.TEXT:
                    if exit_by == "break":
                        break
                    if exit_by == "raise":
                        raise LookupError("the consumer's own")
                    holding.set()
                    await asyncio.Event().wait()  # cancelled here, holding the chunk

        async def main() -> tuple[bool, list[str], int]:
            task = asyncio.create_task(consumer())
            if exit_by == "cancel":
                await holding.wait()
                task.cancel()
            with contextlib.suppress(LookupError, asyncio.CancelledError):
                await task
            closed = await _until(lambda: replay.closed == 1)
            live = [r.state.name for r in cw.active_replies()]
            return closed, live, len(cw.checkpoints())

        closed, live, kept = asyncio.run(main())
    assert closed, "the response is still open while the loop runs on"
    assert live == []
    assert kept == 1


@pytest.mark.parametrize("exit_by", ["cancel", "return"])
@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_consumer_that_ends_holding_a_chunk_closes_the_response_though_the_stream_is_kept(
    exit_by: str, wire: str, kind: str, tmp_path: Path
) -> None:
    """A consumer task that ends holding a chunk (cancelled by a client disconnect, or done
    without closing the stream) while something else still references the stream (an app's
    registry of active streams, for /stop or /status): the reply is settled (its checkpoint
    saved), so the provider's response is closed as the task ends, as a dispose closes the
    sync twin's at once, not left open (the provider generating and billing a reply no one
    reads) for as long as the stream is referenced. Advanced again, the stream still raises
    :class:`StreamInterrupted` with that checkpoint."""
    replay = Replay(text_body(kind, WORDS))
    with rxcontext.open(tmp_path / "kept.db") as store:
        cw = ContextWindow(store, model_for(kind, replay, wire), "kept")
        cw.add_prompt("hi")
        active: dict[str, Any] = {}  # keeps the stream referenced throughout
        holding, leave = asyncio.Event(), asyncio.Event()

        async def reply() -> None:
            stream = active["r1"] = cw.astream()
            async for chunk in stream:
                if chunk.kind is ChunkKind.TEXT:
                    holding.set()
                    await leave.wait()  # sending it to the client...
                    return

        async def main() -> tuple[bool, list[str], BaseException | None]:
            task = asyncio.create_task(reply())
            await holding.wait()
            if exit_by == "cancel":
                task.cancel()
            leave.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            closed = await _until(lambda: replay.closed == 1)
            error: BaseException | None = None
            try:
                await anext(active["r1"])  # waits for the checkpoint's write, in a thread
            except StreamInterrupted as interrupted:
                error = interrupted
            return closed, [c.text for c in cw.checkpoints()], error

        closed, kept, error = asyncio.run(main())
    assert closed, "the response is still open while the stream is referenced"
    assert kept == ["one "]
    assert isinstance(error, StreamInterrupted) and error.checkpoint.text == "one "


# -- one astream, advanced from several tasks -----------------------------------------------------

WORDS = ["one ", "two ", "three ", "four"]


@pytest.mark.parametrize("how", ["wait_for", "a-task-per-chunk"])
@pytest.mark.parametrize("kind", ["chat", "anthropic"])
def test_an_astream_advanced_from_several_tasks_commits_its_reply(
    how: str, kind: str, tmp_path: Path
) -> None:
    """Each ``anext`` in a task of its own is still one consumer reading the reply to its
    end: ``asyncio.wait_for(anext(stream), 30)`` (a per-chunk timeout; Python 3.11's
    wait_for runs it in a task), or a task per chunk raced against a disconnect. Its reply
    is committed, not left interrupted after the first chunk as the first task ended."""
    replay = Replay(text_body(kind, WORDS))
    with rxcontext.open(tmp_path / "tasks.db") as store:
        cw = ContextWindow(store, model_for(kind, replay), "tasks")
        cw.add_prompt("hi")

        async def main() -> str:
            stream = cw.astream()
            disconnected = asyncio.Event()
            got: list[str] = []
            while True:
                try:
                    if how == "wait_for":
                        chunk = await asyncio.wait_for(anext(stream), 30)
                    else:
                        step = asyncio.create_task(anext(stream))
                        gone = asyncio.create_task(disconnected.wait())
                        await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                        gone.cancel()
                        chunk = step.result()
                except StopAsyncIteration:
                    return "".join(got)
                if chunk.kind is ChunkKind.TEXT:
                    got.append(chunk.text)

        text = asyncio.run(main())
        assert text == "".join(WORDS)
        assert [r.content for r in cw.live_records() if r.type is RecordType.MODEL_RESP] == [text]
        assert cw.checkpoints() == [] and cw.active_replies() == []
        assert replay.closed == 1


def test_a_task_that_ends_holding_a_chunk_ends_the_reply_for_whoever_goes_on(
    tmp_path: Path,
) -> None:
    """A task that leaves the stream while it holds a chunk (without closing it) ends the
    reply: its checkpoint is saved as the task ends. Whoever advances the stream after that
    gets :class:`StreamInterrupted` with that checkpoint, never the rest of a reply that
    could no longer be committed (it would end as if it had been)."""
    replay = Replay(text_body("chat", WORDS))
    with rxcontext.open(tmp_path / "peek.db") as store:
        cw = ContextWindow(store, model_for("chat", replay), "peek")
        cw.add_prompt("hi")

        async def main() -> tuple[str, list[str], BaseException | None]:
            stream = cw.astream()
            holding, leave = asyncio.Event(), asyncio.Event()

            async def peek() -> str:
                async for chunk in stream:
                    if chunk.kind is ChunkKind.TEXT:
                        holding.set()
                        await leave.wait()
                        return chunk.text  # leaves holding the chunk, the stream not closed
                raise AssertionError("no text")

            task = asyncio.create_task(peek())
            await holding.wait()
            leave.set()
            first = await task  # it ended before the stream is advanced again
            rest: list[str] = []
            try:
                async for chunk in stream:
                    rest.append(chunk.text)
            except StreamInterrupted as error:
                return first, rest, error
            return first, rest, None

        first, rest, error = asyncio.run(main())
        assert first == "one "
        assert isinstance(error, StreamInterrupted), f"the stream went on: {rest}"
        assert rest == [] and error.checkpoint.text == "one "
        assert [c.text for c in cw.checkpoints()] == ["one "]
        assert [r.type for r in cw.live_records()] == [RecordType.PROMPT]
        assert replay.closed == 1


def test_a_cancelled_consumer_s_checkpoint_is_written_off_the_event_loop(tmp_path: Path) -> None:
    """A consumer cancelled while it holds a chunk (its loop body awaits) ends the reply as
    its task ends, in a worker thread: while another connection holds the database's write
    lock, every other task on the loop goes on (here the one that releases the lock: with
    the write on the loop, the loop would stall until the store gave up). Closing the
    stream waits for the write."""
    path = tmp_path / "locked.db"
    replay = Replay(text_body("chat", WORDS))
    with rxcontext.open(path) as store:
        cw = ContextWindow(store, model_for("chat", replay), "locked", checkpoint_every=None)
        cw.add_prompt("hi")
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        async def main() -> list[str]:
            stream = cw.astream()
            holding = asyncio.Event()

            async def consume() -> None:
                async for chunk in stream:
                    if chunk.kind is ChunkKind.TEXT:
                        holding.set()
                        await asyncio.Event().wait()  # e.g. a slow websocket send

            task = asyncio.create_task(consume())
            await holding.wait()
            other.execute("BEGIN IMMEDIATE")  # another process writing
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            other.execute("COMMIT")  # the loop ran on while the checkpoint waited for the lock
            await stream.aclose()  # waits for the checkpoint's write
            return [c.text for c in cw.checkpoints()]

        try:
            assert asyncio.run(main()) == ["one "]
        finally:
            other.close()
        assert replay.closed == 1


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("wire", ["fast", "sdk"])
def test_a_summary_whose_on_chunk_raises_closes_the_response_at_once(
    path: str, wire: str, tmp_path: Path
) -> None:
    """``summarize(on_chunk=...)`` / ``asummarize`` whose callback raises (the client it
    forwards to went away): the summariser's response is closed before the error reaches
    the caller, on asyncio too, not left to the loop's finalizer (or to no one)."""
    replay = Replay(text_body("chat", ["Summary ", "of ", "the ", "talk"]))
    with rxcontext.open(tmp_path / "summary.db") as store:
        cw = ContextWindow(store, model_for("chat", replay, wire), "summary")
        cw.add_prompt("hello")

        def on_chunk(chunk: Any) -> None:
            if chunk.kind is ChunkKind.TEXT:
                raise ConnectionResetError("the client went away")

        if path == "sync":
            with pytest.raises(ConnectionResetError):
                cw.summarize(on_chunk=on_chunk)
            closed = replay.closed
        else:

            async def main() -> int:
                with pytest.raises(ConnectionResetError):
                    await cw.asummarize(on_chunk=on_chunk)
                return replay.closed  # as the error reached us

            closed = asyncio.run(main())
        assert closed == 1
