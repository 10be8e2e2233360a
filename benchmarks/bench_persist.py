"""Persistence: storing a completed reply, a checkpoint, and what periodic checkpoints cost
per chunk.

``commit`` times ``ReplyPersister.complete()`` for a folded 2,000-chunk reply (build the
Reply, one durable ``synchronous=FULL`` transaction). ``checkpoint_first`` /
``checkpoint_update`` time one periodic checkpoint (insert, then update in place;
``synchronous=NORMAL``). These are wall-clock times (the fsync is the point). The
per-chunk comparison streams 20,000 scripted chunks through ``cw.call()`` with
``checkpoint_every=None``, ``1.0`` (the default) and ``0.01`` (a checkpoint every 10 ms,
several per stream) and reports their ratio in the same run (CPU time).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import _harness as h
import pytest
from _wire import deltas
from conftest import record

from rxcontext import Chunk, ChunkKind, Usage
from rxcontext.persist import ReplyPersister
from rxcontext.providers import ScriptedModel

REPLY_CHUNKS = 2000
STREAM_CHUNKS = 20_000
_ids = itertools.count()


def reply_chunks(n: int) -> list[Chunk]:
    out = [Chunk(ChunkKind.TEXT, t) for t in deltas(n - 2)]
    out.append(Chunk(ChunkKind.USAGE, usage=Usage.of(120, n)))
    out.append(Chunk(ChunkKind.DONE, finish_reason="stop", response_id="resp-bench"))
    return out


def _persister(store: Any, *, checkpoint: bool = False) -> ReplyPersister:
    context = store.get_or_create_context(f"persist-{next(_ids)}")
    persister = ReplyPersister(store, context.id, checkpoint_every=None)
    for chunk in reply_chunks(REPLY_CHUNKS):
        persister.add(chunk)
    if checkpoint:
        persister.flush()
    return persister


@pytest.mark.parametrize("role", ["commit", "checkpoint_first", "checkpoint_update"])
def bench_store(benchmark: Any, store: Any, role: str) -> None:
    benchmark.group = "persistence"
    benchmark.extra_info.update(kind="persist", role=role, chunks=REPLY_CHUNKS)
    target = ReplyPersister.complete if role == "commit" else ReplyPersister.flush

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (_persister(store, checkpoint=role == "checkpoint_update"),), {}

    result = benchmark.pedantic(target, setup=setup, rounds=40, warmup_rounds=2, iterations=1)
    assert result.text == "".join(deltas(REPLY_CHUNKS - 2))  # a Reply, or a Checkpoint
    labels = {
        "commit": f"store a completed {REPLY_CHUNKS}-chunk reply (durable commit)",
        "checkpoint_first": "first periodic checkpoint (insert)",
        "checkpoint_update": "next periodic checkpoint (update in place)",
    }
    record("persist", labels[role], f"{benchmark.stats.stats.median * 1e3:.2f} ms")


EVERY = {"none": None, "1s": 1.0, "10ms": 0.01}


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("every", list(EVERY))
def bench_checkpoint_every(benchmark: Any, store: Any, every: str) -> None:
    chunks = reply_chunks(STREAM_CHUNKS)
    text = "".join(c.text for c in chunks)
    model = ScriptedModel([chunks], repeat_last=True)
    benchmark.group = "checkpoint_every"
    benchmark.extra_info.update(kind="checkpoint_every", role=every, chunks=STREAM_CHUNKS)
    windows = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        cw = h.fresh_window(store, model, checkpoint_every=EVERY[every])
        windows.append(cw)
        return (cw,), {}

    def run(cw: Any) -> str:
        return h.pipeline_sync(cw)

    benchmark.pedantic(run, setup=setup, rounds=15, warmup_rounds=1, iterations=1)
    for cw in windows:
        assert h.stored_text(cw) == text
        assert not cw.checkpoints()
    per_chunk = benchmark.stats.stats.median / STREAM_CHUNKS * 1e6
    record("checkpoint_every", every, per_chunk)
