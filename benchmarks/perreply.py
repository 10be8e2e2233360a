"""What one reply costs the process that streams it, apart from its chunks.

    python benchmarks/perreply.py [--url postgresql://…|--sqlite] [--replies 300] [--chunks 40]

Method. One context, one :class:`~rxcontext.providers.ScriptedModel` reply of ``--chunks``
text chunks and a DONE after each prompt: each reply is ``asyncio.to_thread(cw.add_prompt,
...)`` and then ``cw.astream()`` consumed to its end, one after another on one event loop,
as each stream of ``benchmarks/scaleout.py`` does. 20 replies warm up; then the process's
CPU time (``os.times()``: user and system, every thread) and the wall time over
``--replies`` replies are divided by their number. With ``--chunks 0`` and ``--chunks N``
the difference is the chunks' share. On PostgreSQL (``--url``, a maintenance URL) a
database of the run's own is created and dropped; ``--sqlite`` uses a file in a temporary
folder. Only this process's CPU is counted, not the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from _pgdb import database

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WARMUP = 20


def _measure(url: str, replies: int, chunks: int) -> dict[str, float]:
    store = rxcontext.open(url)
    script = [Chunk(ChunkKind.TEXT, f"w{i} ") for i in range(chunks)]
    script.append(Chunk(ChunkKind.DONE, finish_reason="stop"))
    cw = ContextWindow(
        store, ScriptedModel([script] * (replies + WARMUP)), context="per-reply", retry=None
    )

    async def one(i: int) -> None:
        await asyncio.to_thread(cw.add_prompt, f"question {i}")
        async for _ in cw.astream():
            pass

    async def run() -> dict[str, float]:
        for i in range(WARMUP):
            await one(i)
        t0, c0 = time.perf_counter(), os.times()
        for i in range(replies):
            await one(i)
        t1, c1 = time.perf_counter(), os.times()
        return {
            "wall_ms": (t1 - t0) / replies * 1e3,
            "user_ms": (c1.user - c0.user) / replies * 1e3,
            "system_ms": (c1.system - c0.system) / replies * 1e3,
        }

    try:
        return asyncio.run(run())
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=PG_ADMIN, help="PostgreSQL maintenance URL")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead")
    parser.add_argument("--replies", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=40)
    args = parser.parse_args()
    if args.sqlite:
        with tempfile.TemporaryDirectory() as folder:
            result = _measure(os.path.join(folder, "per-reply.db"), args.replies, args.chunks)
        where = "SQLite file"
    else:
        url, drop = database(args.url, "rxcperreply")
        try:
            result = _measure(url, args.replies, args.chunks)
        finally:
            drop()
        where = "PostgreSQL"
    cpu = result["user_ms"] + result["system_ms"]
    print(
        f"{where}, {args.replies} replies of {args.chunks} chunks: per reply "
        f"wall {result['wall_ms']:.2f} ms, CPU {cpu:.2f} ms "
        f"(user {result['user_ms']:.2f}, system {result['system_ms']:.2f}); "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
