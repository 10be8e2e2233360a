"""1,000 concurrent asyncio streams of 500 events each, all persisted to one SQLite file.

Total CPU (``time.process_time``) of running them together, against 1,000 times the mean
CPU of one such stream run alone on the same loop (target ≤ 1.2×), then a check that
nothing was lost: every context holds its prompt and exactly its reply's text, and no
checkpoint is left.

Two sources: ``scripted`` (``ScriptedModel``, a distinct text per stream, yielding to the
loop before each chunk) and ``openai_chat_fast`` (``OpenAIModel(wire="fast")`` through
the real SDK on the replay transport, whose body yields to the loop before each event as
a socket read would).

Periodic checkpoints are wall-clock driven (one per stream per ``checkpoint_every``
seconds). Replayed streams are CPU-bound, so 1,000 of them side by side each last the
whole run (seconds) while one alone lasts milliseconds: with the default 1 s interval the
concurrent run writes checkpoints the single runs never do. Live streams last as long as
the model talks whatever the concurrency, so the like-for-like ratio is with
``checkpoint_every=None``; the ``scripted-checkpoint_1s`` case shows the default, with the
number of checkpoint writes.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import _harness as h
import httpx2
import openai
import pytest
from _wire import deltas, make_stream
from conftest import record

from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, Usage
from rxcontext.providers import OpenAIModel, ScriptedModel

STREAMS = 1000
EVENTS = 500
SINGLE = 60  # single-stream runs averaged for the baseline


def scripted_models(n: int) -> list[tuple[ScriptedModel, str]]:
    body = [Chunk(ChunkKind.TEXT, t) for t in deltas(EVENTS - 2)]
    done = Chunk(ChunkKind.DONE, usage=Usage.of(40, EVENTS), finish_reason="stop")
    out = []
    for i in range(n):
        head = Chunk(ChunkKind.TEXT, f"[stream {i}] ")
        chunks = [head, *body, done]
        out.append((ScriptedModel([chunks]), "".join(c.text for c in chunks)))
    return out


def replay_models(n: int) -> list[tuple[Any, str]]:
    stream = make_stream("openai_chat", EVENTS)
    why = h.wire_supported(h.openai_chat(stream).make_model, "fast")
    if why is not None:
        pytest.skip(why)
    transport = h.transport(stream, suspend=True)
    aclient = openai.AsyncOpenAI(
        http_client=httpx2.AsyncClient(transport=transport),
        api_key="sk-bench",
        base_url="http://replay.invalid/v1",
        max_retries=0,
    )
    model = OpenAIModel("gpt-4o-mini", async_client=aclient, wire="fast")
    return [(model, stream.text)] * n


SOURCES = {"scripted": scripted_models, "openai_chat_fast": replay_models}
CASES = {
    "scripted": ("scripted", None),
    "openai_chat_fast": ("openai_chat_fast", None),
    "scripted-checkpoint_1s": ("scripted", 1.0),
}


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("case", list(CASES))
def bench_concurrent_streams(benchmark: Any, store: Any, case: str) -> None:
    source, every = CASES[case]
    benchmark.group = "concurrency"
    benchmark.extra_info.update(kind="concurrency", role=case, streams=STREAMS, events=EVENTS)
    models = SOURCES[source](STREAMS + SINGLE + 5)
    loop = asyncio.new_event_loop()
    windows: list[tuple[ContextWindow, str]] = []
    checkpoint_writes = 0
    save_checkpoint = store.save_checkpoint

    def counting_save(*args: Any, **kwargs: Any) -> Any:
        nonlocal checkpoint_writes
        checkpoint_writes += 1
        return save_checkpoint(*args, **kwargs)

    async def one(i: int) -> None:
        model, text = models[i]
        cw = ContextWindow(store, model, context=f"{case}-{i}", checkpoint_every=every)
        cw.add_prompt(h.PROMPT)
        windows.append((cw, text))
        await cw.acall(h.middleware_counter())

    async def one_by_one(indices: range) -> None:
        for i in indices:
            await one(i)

    store.save_checkpoint = counting_save
    try:
        # Baseline: the same streams one at a time on the same loop, after a few to warm up.
        loop.run_until_complete(one_by_one(range(STREAMS + SINGLE, STREAMS + SINGLE + 5)))
        gc.collect()
        start = time.process_time()
        loop.run_until_complete(one_by_one(range(STREAMS, STREAMS + SINGLE)))
        single = (time.process_time() - start) / SINGLE
        single_writes = checkpoint_writes

        async def all_at_once() -> None:
            await asyncio.gather(*(one(i) for i in range(STREAMS)))

        gc.collect()
        start = time.process_time()
        benchmark.pedantic(lambda: loop.run_until_complete(all_at_once()), rounds=1, iterations=1)
        cpu = time.process_time() - start
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        del store.save_checkpoint
        loop.close()

    stored = 0
    for cw, text in windows:
        records = cw.live_records()
        if (
            len(records) == 2
            and records[0].type is RecordType.PROMPT
            and records[1].type is RecordType.MODEL_RESP
            and records[1].content == text
            and not cw.checkpoints()
        ):
            stored += 1
    assert stored == len(windows), f"{len(windows) - stored} streams lost or damaged"
    record(
        "concurrency",
        case,
        {
            "checkpoint_every": every,
            "checkpoint_writes": checkpoint_writes - single_writes,
            "streams": STREAMS,
            "events": EVENTS,
            "cpu_s": cpu,
            "single_s": single,
            "single_sum_s": single * STREAMS,
            "ratio": cpu / (single * STREAMS),
            "stored": stored - SINGLE - 5,
            "intact": stored == len(windows),
        },
    )
