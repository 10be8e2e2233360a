"""A reply that ended leaves no reference cycle behind: its state (persister, run, builder,
records) is freed by reference counting when the caller lets go of it, not by the cyclic
collector.

With thousands of replies streaming at once, every object the collector must find is one
more for its passes to walk; a reply's ~40 objects in a cycle (the heartbeat's fence
closure and the persister, the run and its stop hook) stayed until the next pass. Checked
with the collector off and ``DEBUG_SAVEALL``: what a collection then finds is exactly the
cyclic garbage.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Usage
from rxcontext import operators as rxops
from rxcontext.persist import ReplyPersister
from rxcontext.providers import ScriptedModel
from rxcontext.run import Run

REPLY = [
    Chunk(ChunkKind.TEXT, "one "),
    Chunk(ChunkKind.TEXT, "two"),
    Chunk(ChunkKind.DONE, usage=Usage.of(3, 2), finish_reason="stop"),
]


@pytest.fixture
def cyclic_garbage() -> Iterator[Callable[[], list[object]]]:
    """A function returning the cyclic garbage made since the fixture began."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def found() -> list[object]:
        gc.collect()
        return list(gc.garbage)

    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
        if was_enabled:
            gc.enable()


def reply_state(garbage: list[object]) -> list[str]:
    return sorted(type(o).__name__ for o in garbage if isinstance(o, ReplyPersister | Run))


def window(tmp_path: Path) -> tuple[rxcontext.Store, ContextWindow]:
    store = rxcontext.open(tmp_path / "c.db")
    cw = ContextWindow(store, ScriptedModel([REPLY, REPLY]), context="c")
    cw.add_prompt("Hi")
    return store, cw


def test_acall_leaves_no_cycle(tmp_path: Path, cyclic_garbage: Callable[[], list[object]]) -> None:
    store, cw = window(tmp_path)
    with store:

        async def main() -> None:
            for _ in range(2):  # the second with the checkpointer and heartbeat running
                reply = await cw.acall(rxops.middleware(on_chunk=lambda c: None))
                assert reply.text == "one two"

        asyncio.run(main())
        assert reply_state(cyclic_garbage()) == []
        assert cw.checkpoints() == []


def test_call_leaves_no_cycle(tmp_path: Path, cyclic_garbage: Callable[[], list[object]]) -> None:
    store, cw = window(tmp_path)
    with store:
        for _ in range(2):
            assert cw.call().text == "one two"
        assert reply_state(cyclic_garbage()) == []
