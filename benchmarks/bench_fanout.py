"""Publishing delivered chunks for watchers: what it costs the stream that publishes.

The same 20,000 scripted chunks stream through ``cw.call()`` (persisted, default
checkpoints) with ``fanout=None``, ``"memory"`` and a Redis fan-out (the local server,
under a key prefix of this run's own, deleted afterwards; skipped without one). Timed with
``time.thread_time``: the CPU of the thread that streams, i.e. the hot path; the Redis
writer's own thread is measured apart (process CPU of the whole run, all threads) and
reported beside it. Ratios are against the ``None`` run of the same session.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import _harness as h
import pytest
from bench_persist import reply_chunks
from conftest import record

import rxcontext
from rxcontext.providers import ScriptedModel

STREAM_CHUNKS = 20_000
KINDS = ["none", "memory", "redis"]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[tuple[str, str] | None]:
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


@pytest.mark.benchmark(timer=time.thread_time)
@pytest.mark.parametrize("kind", KINDS)
def bench_publish(benchmark: Any, tmp_path: Any, redis_url: Any, kind: str) -> None:
    fanout: Any = None
    if kind == "memory":
        fanout = "memory"
    elif kind == "redis":
        if redis_url is None:
            pytest.skip("no Redis on 127.0.0.1:6379 (or redis-py not installed)")
        from rxcontext.fanout.redis import RedisFanout

        fanout = RedisFanout(redis_url[0], prefix=redis_url[1], end_ttl=60)
    store = rxcontext.open(tmp_path / "fanout.db", fanout=fanout)
    chunks = reply_chunks(STREAM_CHUNKS)
    text = "".join(c.text for c in chunks)
    model = ScriptedModel([chunks], repeat_last=True)
    benchmark.group = "fanout"
    benchmark.extra_info.update(kind="fanout", role=kind, chunks=STREAM_CHUNKS)
    windows = []
    cpu = [0.0]

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        cw = h.fresh_window(store, model)
        windows.append(cw)
        return (cw,), {}

    def run(cw: Any) -> str:
        start = time.process_time()
        out = h.pipeline_sync(cw)
        cpu[0] += time.process_time() - start
        return out

    rounds = 15
    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    if kind == "redis":
        fanout.close()  # what is queued is sent first
    for cw in windows:
        assert h.stored_text(cw) == text
    store.close()
    per_chunk = benchmark.stats.stats.median / STREAM_CHUNKS * 1e6
    process_per_chunk = cpu[0] / (rounds + 1) / STREAM_CHUNKS * 1e6
    record("fanout", kind, {"thread": per_chunk, "process": process_per_chunk})
