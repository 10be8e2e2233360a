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
import sys
from pathlib import Path
from typing import Any

import pytest
from crafted_text import KINDS, text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import ChunkKind, ContextWindow

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


async def _until(done: Any, turns: int = 200) -> bool:
    """Let the loop run (no sleep on a clock) until ``done()`` or ``turns`` are used up."""
    for _ in range(turns):
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
