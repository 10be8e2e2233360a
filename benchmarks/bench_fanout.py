"""Publishing delivered chunks for watchers: what it costs the stream that publishes.

The same 20,000 scripted chunks stream through ``cw.stream()`` (persisted, default
checkpoints, one SQLite file per variant) with ``fanout=None``, ``"memory"`` and a Redis
fan-out (the local server, under a key prefix of this run's own, deleted afterwards;
skipped without one). The variants run interleaved, round after round, so the load of a
shared machine falls on all of them alike; the table gives medians over the rounds.

Two clocks: ``time.thread_time`` of the streaming thread (the hot path the owner pays)
and ``time.process_time`` of the whole process until everything was sent (with Redis, the
writer thread's JSON and socket work too). Ratios are against ``fanout=None`` in the same run.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _harness as h
import pytest
from bench_persist import reply_chunks
from conftest import record

import rxcontext
from rxcontext.providers import ScriptedModel

STREAM_CHUNKS = 20_000
ROUNDS = 21


@pytest.fixture(scope="module")
def redis_target() -> Iterator[tuple[str, str] | None]:
    try:
        import redis
    except ImportError:
        yield None
        return
    url = "redis://127.0.0.1:6379/0"
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        yield None
        return
    prefix = f"rxbench-{uuid.uuid4().hex[:8]}"
    yield url, prefix
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def bench_publish(tmp_path: Path, redis_target: tuple[str, str] | None) -> None:
    fanouts: dict[str, Any] = {"none": None, "memory": "memory"}
    if redis_target is not None:
        from rxcontext.fanout.redis import RedisFanout

        fanouts["redis"] = RedisFanout(redis_target[0], prefix=redis_target[1], end_ttl=60)
    chunks = reply_chunks(STREAM_CHUNKS)
    text = "".join(c.text for c in chunks)
    stores = {k: rxcontext.open(tmp_path / f"{k}.db", fanout=f) for k, f in fanouts.items()}
    models = {k: ScriptedModel([chunks], repeat_last=True) for k in fanouts}
    thread: dict[str, list[float]] = {k: [] for k in fanouts}
    process: dict[str, list[float]] = {k: [] for k in fanouts}
    for n in range(ROUNDS + 1):
        for kind in fanouts:
            cw = h.fresh_window(stores[kind], models[kind])
            t0, p0 = time.thread_time(), time.process_time()
            out = h.pipeline_sync(cw)
            t1 = time.thread_time()
            if kind == "redis":
                assert fanouts[kind].drain(30.0)  # the writer's work counts, all of it
            p1 = time.process_time()
            assert out == text and h.stored_text(cw) == text
            if n:  # the first round warms up
                thread[kind].append((t1 - t0) / STREAM_CHUNKS * 1e6)
                process[kind].append((p1 - p0) / STREAM_CHUNKS * 1e6)
    for kind, fanout in fanouts.items():
        stores[kind].close()
        if kind == "redis":
            fanout.close()
    for kind in fanouts:
        record(
            "fanout",
            kind,
            {
                "thread": statistics.median(thread[kind]),
                "process": statistics.median(process[kind]),
            },
        )
