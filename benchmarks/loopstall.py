"""What the checkpointer's writes cost an event loop: a 1 ms ticker's lateness while the
periodic checkpoints of N streaming replies are written, against the same loop without.

    python benchmarks/loopstall.py --replies 5000 --seconds 6

N replies are opened in a file-backed WAL SQLite store (``ReplyPersister.begin``) and
registered with a real ``Checkpointer`` (its own thread, ``checkpoint_every=1.0``). On the
event loop, a feeder task folds one text chunk into every reply every 100 ms, a slice of
replies per millisecond (so the feeding itself never holds the loop long), as the stream
drivers would; each tick of the checkpointer then writes every reply's new text in one
transaction. A 1 ms ticker task on the same loop records how late each wake-up is. The
same run with the replies not registered (no checkpoint writes, the same feeding) is the
baseline; the difference of the p99s is the stall the store's writes cause. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rxcontext
from rxcontext import Chunk, ChunkKind
from rxcontext.checkpointer import Checkpointer
from rxcontext.persist import ReplyPersister


def begun_replies(store: Any, replies: int) -> list[ReplyPersister]:
    """``replies`` replies begun in ``store``, one per context, with 1 s checkpoints."""
    persisters = []
    for i in range(replies):
        ctx = store.get_or_create_context(f"c{i}")
        p = ReplyPersister(store, ctx.id, checkpoint_every=1.0)
        p.begin()
        persisters.append(p)
    return persisters


def hand_ticked(
    store: Any, replies: int, model: str | None
) -> tuple[Checkpointer, list[ReplyPersister]]:
    """:func:`begun_replies` of ``model`` in a :class:`Checkpointer` whose ticks the caller
    makes on its own thread (``timer.tick()``), not on the timer's."""
    persisters = begun_replies(store, replies)
    for p in persisters:
        p.model_name = model
    timer = Checkpointer(store, 1.0)
    for p in persisters:
        timer._replies[id(p)] = p
    return timer, persisters


def run(replies: int, seconds: float, checkpoints: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, rxcontext.open(Path(tmp) / "l.db") as store:
        persisters = begun_replies(store, replies)
        timer = Checkpointer(store, 1.0)
        ticks: list[tuple[float, float]] = []
        tick = timer.tick

        def timed_tick() -> None:
            start = time.perf_counter()
            tick()
            ticks.append((start, time.perf_counter()))

        timer.tick = timed_tick  # type: ignore[method-assign]
        chunk = Chunk(ChunkKind.TEXT, "word ")
        lateness: list[float] = []

        async def feeder(stop: float) -> None:
            per_ms = max(1, replies // 100)
            while time.perf_counter() < stop:
                for start in range(0, replies, per_ms):
                    for p in persisters[start : start + per_ms]:
                        p.busy = True
                        if p._claimed:
                            p.wait_claim()
                        p.add(chunk)
                        p.busy = False
                    await asyncio.sleep(0.001)

        async def ticker(stop: float) -> None:
            loop = asyncio.get_running_loop()
            while time.perf_counter() < stop:
                due = loop.time() + 0.001
                await asyncio.sleep(0.001)
                lateness.append(loop.time() - due)

        async def main() -> float:
            if checkpoints:
                for p in persisters:
                    timer.register(p)
            stop = time.perf_counter() + seconds
            cpu = time.process_time()
            await asyncio.gather(feeder(stop), ticker(stop))
            cpu = time.process_time() - cpu
            for p in persisters:
                timer.unregister(p)
            return cpu

        cpu = asyncio.run(main())
        written = sum(1 for p in persisters if p._text_mark)
    lateness.sort()
    return {
        "replies": replies,
        "seconds": seconds,
        "checkpoints": checkpoints,
        "ticks": len(ticks),
        "tick_ms": [round((b - a) * 1e3, 1) for a, b in ticks],
        "replies_written": written,
        "cpu_s": cpu,
        "samples": len(lateness),
        "p50_ms": statistics.median(lateness) * 1e3,
        "p99_ms": lateness[int(len(lateness) * 0.99)] * 1e3,
        "max_ms": lateness[-1] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    on = run(args.replies, args.seconds, True)
    off = run(args.replies, args.seconds, False)
    print(json.dumps({"on": on, "off": off, "p99_added_ms": on["p99_ms"] - off["p99_ms"]}))


if __name__ == "__main__":
    main()
