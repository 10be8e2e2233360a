"""Deterministic counts for one reply, the fourth of the process: Python bytecodes from the
call to the first text chunk (``sys.settrace`` opcode events, main thread), and for the
whole reply SQLite statements (the connection's trace callback) or PostgreSQL round trips
and statements (libpq's trace, ``pool_size=1``; ``tests/pgtrace.py``). ScriptedModel, a
middleware hook. Cases: ``new`` (a new window per reply: its cache has met no reply) and
``same`` (one window: its fourth reply's cache has met replies), sync and asyncio.

    PYTHONPATH=<tree> python benchmarks/ttfc_counts.py [postgresql://.../own_db]
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.operators import middleware
from rxcontext.providers import ScriptedModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
URL = sys.argv[1] if len(sys.argv) > 1 else None
CHUNKS = [Chunk(ChunkKind.TEXT, f"t{i} ") for i in range(18)] + [Chunk(ChunkKind.DONE)]


def one(cw: ContextWindow, mode: str) -> int:
    """The bytecodes from the call to the first text chunk."""
    count = [0]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            count[0] += 1
        return tracer

    hook = middleware(on_chunk=lambda c: None)
    got: list[int] = []

    def seen(c: Chunk) -> None:
        if not got and c.kind is ChunkKind.TEXT:
            sys.settrace(None)
            got.append(count[0])

    if mode == "sync":
        sys.settrace(tracer)
        cw.stream(hook).subscribe(on_next=seen)
    else:

        async def go() -> None:
            stream = cw.astream(hook)
            sys.settrace(tracer)
            async for c in stream:
                seen(c)

        asyncio.run(go())
    return got[0]


def run(case: str, mode: str) -> tuple[int, int, int]:
    if URL is None:
        store = rxcontext.open(os.path.join(tempfile.mkdtemp(), "c.db"), lease_ttl=600)
    else:
        store = rxcontext.open(URL, lease_ttl=600, pool_size=1)
    model = ScriptedModel([CHUNKS], repeat_last=True)
    tag = f"{os.getpid()}-{case}-{mode}"
    shared = ContextWindow(store, model, context=f"w{tag}")
    for i in range(4):
        cw = ContextWindow(store, model, context=f"n{tag}-{i}") if case == "new" else shared
        cw.add_prompt("hello")
        gc.collect()
        if i < 3:
            one(cw, mode)
            continue
        if URL is None:
            sent: list[str] = []
            store._db().set_trace_callback(sent.append)
            codes = one(cw, mode)
            store._db().set_trace_callback(None)
            out = (codes, len(sent), sum(1 for s in sent if s.startswith("SELECT")))
        else:
            import pgtrace

            with pgtrace.traced(store) as trace:
                codes = one(cw, mode)
            out = (codes, trace.round_trips, len(trace.statements))
    store.close()
    return out


if __name__ == "__main__":
    what = "statements, selects" if URL is None else "round trips, statements"
    print(f"case mode: bytecodes to the first chunk, {what} (whole reply)")
    for case in ("new", "same"):
        for mode in ("sync", "async"):
            print(case, mode, *run(case, mode))
