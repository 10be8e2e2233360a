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
