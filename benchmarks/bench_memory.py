"""Peak memory and time of accumulating (and storing) a long reply, to show O(n).

A model yields a 1 MB and a 10 MB reply in 10-character text deltas (fresh strings, as a
provider adapter makes them); ``cw.call()`` folds them in the persister and stores the
reply. Peak memory is traced (``tracemalloc``) in a separate run from the timed one, and
is reported against the text size (target ≤ 3×); time per MB at both sizes shows the cost
is linear (string concatenation in a loop would grow with the size).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import _harness as h
import pytest
from conftest import record

from rxcontext import Chunk, ChunkKind, Reply
from rxcontext.providers.base import Request, reply_from_chunks

DELTA = 10
MB = 1_000_000


class Generated:
    """A model streaming ``text`` in ``DELTA``-character slices (new str objects)."""

    name = "generated"

    def __init__(self, text: str) -> None:
        self.text = text

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        text = self.text
        for i in range(0, len(text), DELTA):
            yield Chunk(ChunkKind.TEXT, text[i : i + DELTA])
        yield Chunk(ChunkKind.DONE, finish_reason="stop")

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        for chunk in self.iter_chunks(request):
            yield chunk

    def complete(self, request: Request) -> Reply:
        return reply_from_chunks(self.iter_chunks(request))

    async def acomplete(self, request: Request) -> Reply:
        return self.complete(request)


def source_text(size: int) -> str:
    words = [
        "reactive",
        "streams",
        "of",
        "tokens",
        "persisted",
        "into",
        "sqlite",
        "checkpoints",
        "resume",
        "",
    ]
    out = []
    n = 0
    i = 0
    while n < size:
        w = words[i % len(words)] + " "
        out.append(w)
        n += len(w)
        i += 1
    return "".join(out)[:size]


@pytest.mark.parametrize("megabytes", [1, 10])
def bench_accumulate_memory(benchmark: Any, store: Any, megabytes: int) -> None:
    text = source_text(megabytes * MB)
    model = Generated(text)
    benchmark.group = "memory"
    benchmark.extra_info.update(kind="memory", role=f"{megabytes}MB", chunks=len(text) // DELTA)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (h.fresh_window(store, model),), {}

    def run(cw: Any) -> str:
        return cw.call().text

    # Timed (untraced): one round is a few seconds at 10 MB.
    assert benchmark.pedantic(run, setup=setup, rounds=3, iterations=1) == text
    seconds = benchmark.stats.stats.median

    # Traced: peak above what was allocated before the call started.
    cw = h.fresh_window(store, model)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        reply = cw.call()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert reply.text == text
    assert h.stored_text(cw) == text
    record(
        "memory",
        f"{megabytes} MB reply in {DELTA}-char deltas, cw.call()",
        {
            "text_mb": len(text) / MB,
            "peak_mb": peak / MB,
            "peak_ratio": peak / len(text),
            "ms_per_mb": seconds * 1e3 / megabytes,
            "chunks": len(text) // DELTA,
        },
    )
