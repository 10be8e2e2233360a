"""A streaming reply keeps few objects for the cyclic collector while it is suspended.

Thousands of asyncio replies in flight at once hold their state across every collection;
each object alive at a generation-1 pass is promoted to the oldest generation, and enough
of them set off a full pass over the whole heap (docs/benchmarks.md, "fewer objects a
streaming reply holds for the collector"). Counted with the collector off: the objects it
tracks with the replies suspended, each holding its first delivered chunk, minus those
tracked before they began (asyncio's own share included: the task's, the generators'). 44.8
a reply here: 43.8 once the wait for dropped streams stopped noting every reply as it began
(48.8 before; now nothing until one is dropped, rxcontext/_dropped.py), +1.0 since 23b7d12
(the check of the begin's history version), still 44.8 after the begin's history read was
removed (1c5d013; measured twice); 71 before the request builder (a closure of
13 objects), the heartbeat's fence (4), the builder's alarm (4) and lists made empty for
every reply were cut.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Usage
from rxcontext.providers import ScriptedModel

REPLIES = 50


def script(i: int) -> list[Chunk]:
    return [
        Chunk(ChunkKind.TEXT, f"[{i}] "),
        Chunk(ChunkKind.TEXT, "two"),
        Chunk(ChunkKind.DONE, usage=Usage.of(3, 2), finish_reason="stop"),
    ]


def test_suspended_replies_hold_few_tracked_objects(tmp_path: Path) -> None:
    with rxcontext.open(tmp_path / "heap.db") as store:
        windows = []
        for i in range(REPLIES):
            cw = ContextWindow(store, ScriptedModel([script(i)]), context=f"c{i}")
            cw.add_prompt("Write.")
            windows.append(cw)

        async def main() -> float:
            was_enabled = gc.isenabled()
            gc.collect()
            gc.disable()
            try:
                before = len(gc.get_objects())
                streams = [cw.astream() for cw in windows]
                for stream in streams:
                    assert (await anext(stream)).text.startswith("[")
                held = (len(gc.get_objects()) - before) / REPLIES
            finally:
                if was_enabled:
                    gc.enable()
            for stream, cw in zip(streams, windows, strict=True):
                async for _ in stream:
                    pass
                assert cw.live_records()[-1].content.endswith("two")
            return held

        held = asyncio.run(main())
    assert held < 46, f"{held:.1f} tracked objects a suspended reply"
