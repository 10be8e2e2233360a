"""CPU time to the first text chunk: bare SDK iteration vs ``cw.stream()`` on the same bytes.

For each provider and path, samples are interleaved (bare SDK, pipeline with
``wire="sdk"``, pipeline with ``wire="fast"``, repeat) so drift on a shared machine hits
all alike; each sample starts before the request is made and stops at the first event or
chunk carrying text (the SDK's first events carry none, so both sides wait for the same
event). The pipeline side includes what ``cw.stream()`` adds before it: the RxPY
subscription, reading the live records, building the request from them, the persister and
the middleware. The rest of the (short) stream then runs and is stored, outside the
sample. A ``ScriptedModel`` row shows the pipeline's own share with no SDK at all (its
"bare" side takes the first chunk from ``model.iter_chunks`` with a ready request).
Times are CPU time (``time.process_time``: everything here is CPU-bound, and CPU time is
far less disturbed than wall time by other jobs on a shared machine). Medians are
reported; the target for the time added is ≤ 100 µs."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import _harness as h
import pytest
from _tables import PROVIDER_TITLES
from _wire import deltas, make_stream
from conftest import record

from rxcontext import Chunk, ChunkKind
from rxcontext.providers import ScriptedModel
from rxcontext.providers.base import Request

SAMPLES = 150


def _is_text(chunk: Any) -> bool:
    return chunk.kind is ChunkKind.TEXT and bool(chunk.text)


def first_text_sdk(provider: h.Provider) -> Callable[[], float]:
    """Seconds from the call to the first event with text, through the bare SDK."""
    name = provider.name
    c = provider.client
    prompt = [{"role": "user", "content": h.PROMPT}]

    def run() -> float:
        start = time.process_time()
        if name == "openai_chat":
            with c.chat.completions.create(model="m", messages=prompt, stream=True) as s:
                for ev in s:
                    if ev.choices and ev.choices[0].delta.content:
                        return time.process_time() - start
        elif name == "openai_responses":
            with c.responses.create(model="m", input=prompt, stream=True) as s:
                for ev in s:
                    if ev.type == "response.output_text.delta":
                        return time.process_time() - start
        elif name == "anthropic":
            with c.messages.create(model="m", max_tokens=99, messages=prompt, stream=True) as s:
                for ev in s:
                    if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                        return time.process_time() - start
        else:
            it = c.models.generate_content_stream(model="m", **provider.extra)
            for response in it:
                if response.candidates:
                    elapsed = time.process_time() - start
                    it.close()
                    return elapsed
        raise AssertionError("no text")

    return run


def first_text_sdk_async(provider: h.Provider) -> Callable[[], Any]:
    name = provider.name
    c = provider.async_client
    prompt = [{"role": "user", "content": h.PROMPT}]

    async def run() -> float:
        start = time.process_time()
        if name == "openai_chat":
            async with await c.chat.completions.create(
                model="m", messages=prompt, stream=True
            ) as s:
                async for ev in s:
                    if ev.choices and ev.choices[0].delta.content:
                        return time.process_time() - start
        elif name == "openai_responses":
            async with await c.responses.create(model="m", input=prompt, stream=True) as s:
                async for ev in s:
                    if ev.type == "response.output_text.delta":
                        return time.process_time() - start
        elif name == "anthropic":
            async with await c.messages.create(
                model="m", max_tokens=99, messages=prompt, stream=True
            ) as s:
                async for ev in s:
                    if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                        return time.process_time() - start
        else:
            it = await c.models.generate_content_stream(model="m", **provider.extra)
            async for response in it:
                if response.candidates:
                    elapsed = time.process_time() - start
                    await it.aclose()
                    return elapsed
        raise AssertionError("no text")

    return run


def first_text_pipeline(store: Any, model: Any) -> Callable[[], float]:
    def run() -> float:
        cw = h.fresh_window(store, model)
        stamps: list[float] = []
        errors: list[Exception] = []

        def on_next(chunk: Any) -> None:
            if not stamps and _is_text(chunk):
                stamps.append(time.process_time())

        start = time.process_time()
        cw.stream(h.middleware_counter()).subscribe(on_next=on_next, on_error=errors.append)
        if errors:
            raise errors[0]
        return stamps[0] - start

    return run


def first_text_pipeline_async(store: Any, model: Any) -> Callable[[], Any]:
    async def run() -> float:
        cw = h.fresh_window(store, model)
        start = time.process_time()
        stream = cw.astream(h.middleware_counter())
        try:
            async for chunk in stream:
                if _is_text(chunk):
                    return time.process_time() - start
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        raise AssertionError("no text")

    return run


def scripted_runs(store: Any, loop: asyncio.AbstractEventLoop, sync: bool) -> dict[str, Any]:
    chunks = [Chunk(ChunkKind.TEXT, t) for t in deltas(18)] + [Chunk(ChunkKind.DONE)]
    model = ScriptedModel([chunks], repeat_last=True)
    request = Request(records=h.fresh_window(store, model).live_records())

    def bare() -> float:
        start = time.process_time()
        it = model.iter_chunks(request)
        next(it)
        elapsed = time.process_time() - start
        it.close()
        return elapsed

    async def bare_async() -> float:
        start = time.process_time()
        it = model.aiter_chunks(request)
        await anext(it)
        elapsed = time.process_time() - start
        await it.aclose()  # type: ignore[attr-defined]
        return elapsed

    if sync:
        return {"bare": bare, "sdk": first_text_pipeline(store, model)}
    pipe_async = first_text_pipeline_async(store, model)
    return {
        "bare": lambda: loop.run_until_complete(bare_async()),
        "sdk": lambda: loop.run_until_complete(pipe_async()),
    }


def provider_runs(
    provider_name: str, store: Any, loop: asyncio.AbstractEventLoop, sync: bool
) -> dict[str, Any]:
    provider = h.BUILDERS[provider_name](make_stream(provider_name, 20))
    runs: dict[str, Any] = {}
    if sync:
        runs["bare"] = first_text_sdk(provider)
    else:
        bare_async = first_text_sdk_async(provider)
        runs["bare"] = lambda: loop.run_until_complete(bare_async())
    for wire in ("sdk", "fast"):
        if h.wire_supported(provider.make_model, wire) is not None:
            continue
        model = provider.model(wire)
        if sync:
            runs[wire] = first_text_pipeline(store, model)
        else:
            pipe_async = first_text_pipeline_async(store, model)
            runs[wire] = lambda pipe_async=pipe_async: loop.run_until_complete(pipe_async())
    return runs


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("provider_name", [*h.BUILDERS, "scripted"])
def bench_time_to_first_chunk(
    benchmark: Any, store: Any, loop: asyncio.AbstractEventLoop, provider_name: str, path: str
) -> None:
    sync = path == "sync"
    runs: dict[str, Callable[[], float]] = (
        scripted_runs(store, loop, sync)
        if provider_name == "scripted"
        else provider_runs(provider_name, store, loop, sync)
    )
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(5):
        for run in runs.values():
            run()
    for _ in range(SAMPLES):
        for name, run in runs.items():
            samples[name].append(run())
    medians = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
    result = {
        "bare_us": medians["bare"],
        "pipeline_sdk_us": medians.get("sdk"),
        "added_sdk_us": medians["sdk"] - medians["bare"] if "sdk" in medians else None,
        "pipeline_fast_us": medians.get("fast"),
        "added_fast_us": medians["fast"] - medians["bare"] if "fast" in medians else None,
        "samples": SAMPLES,
    }
    title = PROVIDER_TITLES.get(provider_name, "ScriptedModel (no SDK)")
    record("ttfc", f"{title} {path}", result)
    # Shown in pytest-benchmark's table: one more pipeline sample (SDK wire).
    benchmark.group = "time to first chunk"
    benchmark.extra_info.update(kind="ttfc", provider=provider_name, path=path, role="pipeline")
    benchmark.extra_info.update(result)
    benchmark.pedantic(runs["sdk"], rounds=1, iterations=1)
