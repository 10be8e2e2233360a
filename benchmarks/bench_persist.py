"""Persistence: storing a completed reply, a checkpoint, and what periodic checkpoints cost
per chunk.

``commit`` times ``ReplyPersister.complete()`` for a folded 2,000-chunk reply whose row
was begun (build the Reply, one durable ``synchronous=FULL`` transaction).
``checkpoint_first`` / ``checkpoint_update`` time one checkpoint write of 2,000 chunks of
new text (the reply's first, then one after a first; each appends only the new text,
``synchronous=NORMAL``). These are wall-clock times (the fsync is the point). The
per-chunk comparison streams 20,000 scripted chunks through ``cw.call()`` with
``checkpoint_every=None``, ``1.0`` (the default) and ``0.01`` (a checkpoint every 10 ms,
several per stream) and reports their ratio in the same run (CPU time).
``RXCONTEXT_BENCH_PERSIST_ROUNDS`` (default 40) sets the stores' rounds
(tests/test_bench_persist.py runs them at 2, so this file cannot rot unseen).
"""

from __future__ import annotations

import itertools
import os
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
ROUNDS = int(os.environ.get("RXCONTEXT_BENCH_PERSIST_ROUNDS", "40"))
_ids = itertools.count()


def reply_chunks(n: int) -> list[Chunk]:
    out = [Chunk(ChunkKind.TEXT, t) for t in deltas(n - 2)]
    out.append(Chunk(ChunkKind.USAGE, usage=Usage.of(120, n)))
    out.append(Chunk(ChunkKind.DONE, finish_reason="stop", response_id="resp-bench"))
    return out


def _persister(store: Any, *, checkpoint: bool = False) -> ReplyPersister:
    """A begun reply with a folded 2,000-chunk reply (and, with ``checkpoint``, a first
    checkpoint of it and then 2,000 more chunks: what the next checkpoint writes)."""
    context = store.get_or_create_context(f"persist-{next(_ids)}")
    persister = ReplyPersister(store, context.id, checkpoint_every=None)
    persister.begin()
    persister.sent()
    for chunk in reply_chunks(REPLY_CHUNKS):
        persister.add(chunk)
    if checkpoint:
        persister.attend()
        for chunk in text_chunks():
            persister.add(chunk)
    return persister


def text_chunks() -> list[Chunk]:
    return [Chunk(ChunkKind.TEXT, t) for t in deltas(REPLY_CHUNKS)]


def _commit(persister: ReplyPersister) -> ReplyPersister:
    persister.complete(persister.reply(), last=True)
    return persister


def _checkpoint(persister: ReplyPersister) -> ReplyPersister:
    persister.attend()  # the write a periodic tick makes: the new text since the last one
    return persister


@pytest.mark.parametrize("role", ["commit", "checkpoint_first", "checkpoint_update"])
def bench_store(benchmark: Any, store: Any, role: str) -> None:
    benchmark.group = "persistence"
    benchmark.extra_info.update(kind="persist", role=role, chunks=REPLY_CHUNKS)
    target = _commit if role == "commit" else _checkpoint

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (_persister(store, checkpoint=role == "checkpoint_update"),), {}

    last = benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    text = "".join(deltas(REPLY_CHUNKS - 2))
    assert last.ticket is not None
    if role == "commit":
        assert store.records(last.context_id)[-1].content == text
    else:
        stored = store.get_checkpoint(last.ticket.checkpoint_id).text
        more = "".join(c.text for c in text_chunks()) if role == "checkpoint_update" else ""
        assert stored == text + more
    labels = {
        "commit": f"store a completed {REPLY_CHUNKS}-chunk reply (durable commit)",
        "checkpoint_first": f"first periodic checkpoint ({REPLY_CHUNKS} chunks of text)",
        "checkpoint_update": f"next periodic checkpoint ({REPLY_CHUNKS} new chunks appended)",
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
