"""The same concurrency ratio as ``manystreams.py``, without rxcontext: a floor for it.

Run by hand::

    python benchmarks/bare_concurrency.py --streams 5000 --events 200 --depth 0

``--streams`` asyncio tasks each consume an async generator of ``--events`` rxcontext
``Chunk`` objects (an ``asyncio.sleep(0)`` before each, as ``manystreams.py``'s replayed
streams do) through ``--depth`` more async-generator layers, and join the texts. Process
CPU of all of them at once, against the same tasks one at a time (the mean of a sample of
200 before and after each round, as ``manystreams.py`` does); prints one JSON object with
each round's ratio and the median. No store, no thread, no RxPY: what the interpreter
alone does with that many streams in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rxcontext import Chunk, ChunkKind

WORDS = ["reactive ", "streams ", "of ", "tokens ", "into ", "sqlite, ", "café ", "resumed "]


async def source(i: int, events: int) -> AsyncIterator[Chunk]:
    for k in range(events):
        await asyncio.sleep(0)
        yield Chunk(ChunkKind.TEXT, WORDS[(i + k) % len(WORDS)])


async def layer(inner: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    async for chunk in inner:
        yield chunk


async def one(i: int, events: int, depth: int) -> str:
    it = source(i, events)
    for _ in range(depth):
        it = layer(it)
    return "".join([c.text async for c in it])


async def together(n: int, events: int, depth: int) -> float:
    gc.collect()
    start = time.process_time()
    await asyncio.gather(*(one(i, events, depth) for i in range(n)))
    return (time.process_time() - start) / n


async def alone(n: int, events: int, depth: int) -> float:
    gc.collect()
    start = time.process_time()
    for i in range(n):
        await one(i, events, depth)
    return (time.process_time() - start) / n


async def main(streams: int, events: int, depth: int, rounds: int) -> dict[str, object]:
    await alone(50, events, depth)  # warm up
    ratios = []
    for _ in range(rounds):
        before = await alone(200, events, depth)
        side = await together(streams, events, depth)
        after = await alone(200, events, depth)
        ratios.append(round(side / ((before + after) / 2), 3))
    return {
        "streams": streams,
        "events": events,
        "depth": depth,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.streams, a.events, a.depth, a.rounds))))
