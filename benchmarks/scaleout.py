"""Scale-out: many concurrent streams over worker processes on PostgreSQL, watched live
from another process through a Redis fan-out.

    python benchmarks/scaleout.py --streams 200 --workers 4 --seconds 30 [--json out.json]

Method. The parent creates a PostgreSQL database of the run's own on the server at
``--pg`` (dropped afterwards) and picks a Redis key prefix of its own (its keys deleted
afterwards), then starts ``--workers`` owner processes and ``--watchers`` watcher
processes (``python benchmarks/scaleout.py --role ...``). Every process opens the store
with ``rxcontext.open(url, fanout=RedisFanout(redis_url, prefix=...))``. Each owner runs
``streams / workers`` asyncio streams on one event loop: a stream is a window on a context
of its own that adds a prompt (``asyncio.to_thread(cw.add_prompt, ...)``) and consumes
``cw.astream(reply_id=...)`` to the end, then starts its next reply at once, until
``--seconds`` have passed (see the measured window below); so every stream stays live
for the whole run. Replies have a random length of
``chunks/2 .. 3*chunks/2`` text chunks (seeded; mean ``--chunks``), so their ends spread
out. The model (:class:`PacedModel`, below) yields a chunk every ``--interval`` seconds on
a fixed grid per stream that runs on across replies (``asyncio.sleep`` until the chunk is
due: no busy-waiting; streams' grids are offset evenly over one interval): 200 streams at
50 ms are 4,000 chunks/s if the machine keeps up, and a chunk yielded late shows as
lateness against its grid time. Each chunk's text carries its sequence number and
``time.monotonic_ns()`` at the yield (CLOCK_MONOTONIC is one clock for every process on
Linux). Every reply is watched from a watcher process (a task per reply iterating
``cw.awatch(reply_id)``, as each browser tab would), which notes when each chunk arrives.
It learns a reply's id the way a web front-end would, from the owner: the owner's
``on_start`` hook (the reply's row exists by then) queues the id, and a task of the
owner's adds it to a Redis Stream of the run's own that the watcher process reads.

The figures cover a **measured window**: from ``--warmup`` seconds (2) after the start,
when every stream's first prompt and begin come at once, to the end, ``--seconds`` later.
Streams begin no reply after the end; the last one runs to its own length (its chunks
after the end are not counted). ``--cut-at-end`` is the method before 2026-12-03: every
stream's last reply is cut to end exactly at the end (all 200 commit at once) and the
whole run is measured.

Measured: **commit** — from the model yielding the reply's final (DONE) chunk to the
owner's ``async for`` ending (the reply is committed before the iteration ends), and the
``store.commit_reply`` call alone; **checkpoint** — each ``store.save_checkpoints`` call
(the periodic batch of a process's streaming replies, every ``checkpoint_every`` = 1 s);
**watch** — chunk delivered to the owner's ``async for`` to the watcher process receiving
it (split at the watcher's fan-out read), and model yield to watcher; **watch start** —
the owner's ``on_start`` to the watcher process hearing of the reply, and from then to the
watch's first fan-out read returning (its head: the log so far); the owners'
fan-out sends; **lateness** of yields against the grid; the gap between replies; the CPU
of each process (``getrusage``) over the run, of the run's PostgreSQL backends and of
``redis-server`` (``/proc``); the database's transactions; ``SELECT 1`` and ``PING``
round trips just before and during the run (the servers apart from the library); the
load average; and the chunks and replies achieved. The store and fan-out methods are
timed by wrapping them on their instances in this script; the library is not changed to
measure. ``RXSCALE_PROFILE=file`` / ``RXSCALE_WATCHER_PROFILE=file`` write a cProfile of
the first owner's event loop / of the first watcher process's loop. Opt-in timers, each with
a cost of its own: ``RXSCALE_TAIL_TIMES=1`` splits a chunk's way at the owner's Redis send
and the watcher's tail thread (a regex per chunk on each); ``RXSCALE_EXECUTOR_TIMES=1``
times each work item's wait for a thread of the owners' default executor, and
``RXSCALE_EXECUTOR_DUMP=file`` writes the first owner's items (function, wait, run time,
when submitted) as JSON. ``RXSCALE_WATCHER_SWITCH=seconds`` sets the watcher processes'
``sys.setswitchinterval`` (how long a thread that holds the GIL keeps it from one that
waits; 0.005 by default), to see what the tail thread's waits for the GIL cost.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from _pgdb import database

PG_ADMIN = os.environ.get("RXCONTEXT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("RXCONTEXT_REDIS", "redis://127.0.0.1:6379/0")
STAMP = re.compile(r"\[(\d+):(\d+)\]")
GRACE = 90.0  # seconds after the run's end a process may take to finish its replies


def _now() -> int:
    return time.monotonic_ns()


# -- the owners ---------------------------------------------------------------------------


class PacedModel:
    """A model whose chunks are due on a fixed grid (``interval`` apart, from ``start``) that
    runs on across its replies; the reply length is set before each call (``length``).

    A chunk's text is ``[seq:yield_ns] `` (``seq`` counts within the reply)."""

    name = "paced"
    call_options = frozenset(
        {"temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema"}
    )
    context_window = None

    def __init__(self, start: float, interval: float, inside: Callable[[int], bool]) -> None:
        self.inside = inside  # whether a time (monotonic ns) is in the measured window
        self.due = start  # loop.time() of the next chunk
        self.interval = interval
        self.length = 1
        self.late: list[int] = []  # ns each yield came after its due time
        self.done_ns = 0  # when the current reply's DONE was yielded

    def iter_chunks(self, request: Any) -> Iterator[Any]:
        raise NotImplementedError("the benchmark streams with astream() only")

    async def aiter_chunks(self, request: Any) -> AsyncIterator[Any]:
        from rxcontext import Chunk, ChunkKind

        loop = asyncio.get_running_loop()
        for seq in range(self.length):
            self.due += self.interval
            wait = self.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.inside(_now()):
                self.late.append(int((loop.time() - self.due) * 1e9))
            yield Chunk(ChunkKind.TEXT, f"[{seq}:{_now()}] ")
        self.done_ns = _now()
        yield Chunk(ChunkKind.DONE, finish_reason="stop")

    def complete(self, request: Any) -> Any:
        raise NotImplementedError

    async def acomplete(self, request: Any) -> Any:
        raise NotImplementedError


_RUNS: dict[str, list[tuple[int, int]]] | None = (
    {} if os.environ.get("RXSCALE_EXECUTOR_DUMP") else None
)


class _TimedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, noting how long each work item waited for a thread."""

    def __init__(self, into: list[int], inside: Callable[[int], bool]) -> None:
        super().__init__()  # the default size, as asyncio's own
        self._into = into
        self._inside = inside

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        queued = _now()

        def timed() -> Any:
            started = _now()
            if self._inside(queued):
                self._into.append(started - queued)
            try:
                return fn(*args, **kwargs)
            finally:
                if _RUNS is not None:
                    name = getattr(getattr(fn, "func", fn), "__qualname__", repr(fn))
                    _RUNS.setdefault(name, []).append((started - queued, _now() - started, queued))

        return super().submit(timed)


def _window(cfg: dict[str, Any], start: int, end: int) -> list[int]:
    """The measured window: from ``--warmup`` seconds after the start (every stream's first
    prompt and begin come at once) to the end; with ``--cut-at-end``, the whole run."""
    if cfg["cut_at_end"]:
        return [0, 2**63]
    return [start + int(cfg["warmup"] * 1e9), end]


def _timed(store: Any, name: str, into: list[int], inside: Callable[[int], bool]) -> None:
    """Time every call of ``store.<name>`` (into ``into``, ns, if it began ``inside`` the
    measured window), on this instance only."""
    original = getattr(store, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = _now()
        try:
            return original(*args, **kwargs)
        finally:
            if inside(t0):
                into.append(_now() - t0)

    setattr(store, name, timed)


def _open(cfg: dict[str, Any], pool: int) -> Any:
    import rxcontext
    from rxcontext.fanout.redis import RedisFanout

    fanout = RedisFanout(
        cfg["redis"], prefix=cfg["prefix"], end_ttl=120.0, flush_every=cfg["flush_every"]
    )
    return rxcontext.open(
        cfg["url"],
        fanout=fanout,
        pool_size=pool,
        prepared_statements=cfg.get("prepared_statements", False),
    )


def _slots(cfg: dict[str, Any], worker: int) -> list[int]:
    return [s for s in range(cfg["streams"]) if s % cfg["workers"] == worker]


def _reply_id(cfg: dict[str, Any], slot: int, n: int) -> str:
    return f"{cfg['tag']}-s{slot}-r{n}"


def _announcements(cfg: dict[str, Any]) -> str:
    return f"{cfg['prefix']}:bench:begun"


def _wait_start() -> int:
    """Say ready, then wait for the parent's start time (monotonic ns). With
    ``--gc-freeze`` what the process has made so far (modules, store, clients) is moved out
    of the collector's reach first, as a latency-minded server does once started."""
    if os.environ.get("RXSCALE_GC_FREEZE"):
        import gc

        gc.collect()
        gc.freeze()
    print("ready", flush=True)
    return int(sys.stdin.readline())


def _config() -> dict[str, Any]:
    """Say imported (the parent readies the database meanwhile), then read the run's
    configuration from the file whose path the parent sends."""
    import rxcontext.fanout.redis
    import rxcontext.store.postgres  # noqa: F401

    print("imported", flush=True)
    cfg = dict(json.loads(Path(sys.stdin.readline().strip()).read_text()))
    import faulthandler

    faulthandler.dump_traceback_later(cfg["seconds"] + 40.0)  # still busy: say where
    return cfg


async def _sleep_until(ns: int) -> None:
    wait = (ns - _now()) / 1e9
    if wait > 0:
        await asyncio.sleep(wait)


def run_owner(worker: int, out: Path) -> None:
    from rxcontext import ChunkKind, ContextWindow
    from rxcontext import operators as rxops

    cfg = _config()
    store = _open(cfg, cfg["pool"])
    commit_call: list[int] = []
    checkpoint_call: list[int] = []
    begin_call: list[int] = []
    window = [0, 0]  # the measured window (monotonic ns), set once the start is known

    def inside(t: int) -> bool:
        return window[0] <= t <= window[1]

    commit_at: dict[str, tuple[int, int]] = {}  # context id -> its last commit's (start, end)
    commit = store.commit_reply

    def timed_commit(context_id: str, *args: Any, **kwargs: Any) -> Any:
        t0 = _now()
        try:
            return commit(context_id, *args, **kwargs)
        finally:
            t1 = _now()
            if inside(t0):
                commit_call.append(t1 - t0)
            commit_at[context_id] = (t0, t1)

    store.commit_reply = timed_commit
    _timed(store, "save_checkpoints", checkpoint_call, inside)
    _timed(store, "begin_reply", begin_call, inside)
    from rxcontext.fanout import fanout_for

    fanout: Any = fanout_for(store)
    flushes: list[tuple[int, int]] = []  # (start, duration) ns of the fan-out writer's sends
    flush = fanout._flush

    sent: dict[int, int] = {}  # chunk's yield ns -> when the send carrying it returned
    send_times = bool(os.environ.get("RXSCALE_TAIL_TIMES"))

    def timed_flush() -> None:
        t0 = _now()
        stamps = []
        if send_times:  # opt-in: a regex per chunk on the writer thread
            for channel in list(fanout._open.values()):
                for _, chunk in channel.pending:
                    stamps.extend(int(b) for _, b in STAMP.findall(chunk.text))
        try:
            flush()
        finally:
            t1 = _now()
            if inside(t0):
                flushes.append((t0, t1 - t0))
            for stamp in stamps:
                sent.setdefault(stamp, t1)

    fanout._flush = timed_flush
    slots = _slots(cfg, worker)
    rng = random.Random(worker)
    interval = cfg["interval"]
    windows = {s: ContextWindow(store, None, f"{cfg['tag']}-s{s}", retry=None) for s in slots}
    commit_e2e: list[int] = []
    executor_wait: list[int] = []  # a work item submitted -> a thread starts it
    commit_before: list[int] = []  # DONE yielded -> the commit_reply call starts
    commit_after: list[int] = []  # the call returns -> the `async for` ends
    delivered: dict[str, list[int]] = {}  # reply -> delivery ns of each chunk
    replies = 0
    begun: dict[int, int] = {}  # slot -> replies begun
    prompt_wall: list[int] = []  # awaiting add_prompt in a thread
    between: list[int] = []  # a reply stored -> the next one's first chunk delivered
    failures: list[str] = []

    announce: asyncio.Queue[tuple[int, str, int] | None] = asyncio.Queue()

    async def announcer() -> None:
        """Tell the watchers each reply id once it has begun (a Redis Stream of the run's
        own), in order; ``""`` ends a stream's replies."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(cfg["redis"])
        key = _announcements(cfg)
        done = False
        while not done:
            items = [await announce.get()]
            while not announce.empty():
                items.append(announce.get_nowait())
            pipe = client.pipeline(transaction=False)
            for item in items:
                if item is None:
                    done = True
                else:
                    pipe.xadd(key, {"s": item[0], "r": item[1], "t": item[2]})
            await pipe.execute()
        await client.aclose()

    async def stream(slot: int, start: int, end: int) -> None:
        try:
            await replies_of(slot, start, end)
        finally:
            announce.put_nowait((slot, "", 0))

    async def replies_of(slot: int, start: int, end: int) -> None:
        nonlocal replies
        loop = asyncio.get_running_loop()
        offset = (slot // cfg["workers"]) / len(slots) * interval
        model = PacedModel(loop.time() + (start - _now()) / 1e9 + offset, interval, inside)
        cw = windows[slot]
        cw.model = model
        n = 0
        last_stored: int | None = None
        while True:
            length = rng.randint(cfg["chunks"] // 2, cfg["chunks"] * 3 // 2)
            if cfg["cut_at_end"]:  # every stream's last reply ends at the end, all at once
                length = min(length, int((end - _now()) / 1e9 / interval))
                if length < 1 and n:
                    return
            elif n and _now() >= end:
                return  # the last reply, begun before the end, ran to its own length
            length = max(length, 1)  # one reply at least, even from a process that started late
            model.length = length
            t_prompt = _now()
            await asyncio.to_thread(cw.add_prompt, f"prompt {n}")
            if inside(t_prompt):
                prompt_wall.append(_now() - t_prompt)
            reply_id = _reply_id(cfg, slot, n)
            times = delivered[reply_id] = []
            begun[slot] = n + 1
            begun_hook = rxops.middleware(
                on_start=lambda slot=slot, reply_id=reply_id: announce.put_nowait(
                    (slot, reply_id, _now())
                )
            )
            try:
                async for chunk in cw.astream(begun_hook, reply_id=reply_id):
                    if chunk.kind is ChunkKind.TEXT:
                        times.append(_now())
            except Exception as error:  # counted and reported, never hidden
                failures.append(f"{reply_id}: {type(error).__name__}: {error}")
                return
            stored = _now()
            began, ended = commit_at.get(cw.context_id, (0, 0))
            if inside(model.done_ns):
                commit_e2e.append(stored - model.done_ns)
            if began > model.done_ns and inside(model.done_ns):
                commit_before.append(began - model.done_ns)
                commit_after.append(stored - ended)
            if n and times and last_stored is not None and inside(last_stored):
                between.append(times[0] - last_stored)
            last_stored = stored
            replies += 1
            n += 1

    async def main() -> tuple[float, float, list[int]]:
        if os.environ.get("RXSCALE_EXECUTOR_TIMES"):  # opt-in: the default executor's queue
            asyncio.get_running_loop().set_default_executor(_TimedExecutor(executor_wait, inside))
        start = await asyncio.to_thread(_wait_start)
        end = start + int(cfg["seconds"] * 1e9)
        window[:] = _window(cfg, start, end)
        await _sleep_until(start)
        t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        telling = asyncio.create_task(announcer())
        await asyncio.gather(*(stream(s, start, end) for s in slots))
        wall = time.monotonic() - t0
        announce.put_nowait(None)
        await telling
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        late = [x for s in slots for x in windows[s].model.late]  # type: ignore[union-attr]
        return cpu, wall, late

    profile = os.environ.get("RXSCALE_PROFILE")
    if profile and worker == 0:  # the event loop's thread of the first owner
        import cProfile

        with cProfile.Profile() as prof:
            cpu, wall, late = asyncio.run(main())
        prof.dump_stats(profile)
    else:
        cpu, wall, late = asyncio.run(main())
    if _RUNS is not None and worker == 0:
        Path(os.environ["RXSCALE_EXECUTOR_DUMP"]).write_text(json.dumps(_RUNS))
    fanout_drained = fanout.drain(10.0)
    store.close()
    fanout.close()
    out.write_text(
        json.dumps(
            {
                "role": "owner",
                "worker": worker,
                "window": window,
                "pid": os.getpid(),
                "cpu": cpu,
                "wall": wall,
                "streams": len(slots),
                "replies": replies,
                "chunks": sum(len(t) for t in delivered.values()),
                "failures": failures,
                "begun": begun,
                "fanout_drained": fanout_drained,
                "commit_e2e": commit_e2e,
                "executor_wait": executor_wait,
                "commit_before": commit_before,
                "commit_after": commit_after,
                "commit_call": commit_call,
                "checkpoint_call": checkpoint_call,
                "begin_call": begin_call,
                "late": late,
                "flushes": flushes,
                "sent": sent,
                "prompt_wall": prompt_wall,
                "between": between,
                "delivered": delivered,
            }
        )
    )


# -- the watchers -------------------------------------------------------------------------


def run_watcher(index: int, out: Path) -> None:
    from rxcontext import ChunkKind, ContextWindow, ReplyNotFound

    if os.environ.get("RXSCALE_WATCHER_SWITCH"):
        sys.setswitchinterval(float(os.environ["RXSCALE_WATCHER_SWITCH"]))
    cfg = _config()
    store = _open(cfg, cfg["watcher_pool"])
    slots = [s for s in range(cfg["streams"]) if s % cfg["watchers"] == index]
    cw = ContextWindow(store, None, f"{cfg['tag']}-watcher-{index}")
    received: dict[str, list[tuple[int, int, int]]] = {}  # reply -> (seq, yield, recv)
    watched = 0
    failures: list[str] = []
    from rxcontext.fanout import fanout_for
    from rxcontext.fanout.entries import Chunks

    fanout: Any = fanout_for(store)
    read = fanout.read
    fetched: dict[str, list[tuple[int, int]]] = {}  # reply -> (last seq, ns) of each read
    # reply -> (owner's on_start, the watcher hears of it, its watch's first read returned)
    starts: dict[str, list[int]] = {}

    def timed_read(reply_id: str, *args: Any, **kwargs: Any) -> Any:
        entries = read(reply_id, *args, **kwargs)
        now = _now()
        for entry in entries or ():
            if isinstance(entry, Chunks):
                fetched.setdefault(reply_id, []).append((entry.last, now))
        return entries

    fanout.read = timed_read
    aread = fanout.aread

    async def timed_aread(reply_id: str, *args: Any, **kwargs: Any) -> Any:
        entries = await aread(reply_id, *args, **kwargs)
        now = _now()
        start = starts.get(reply_id)
        if start is not None and len(start) == 2:
            start.append(now)
        for entry in entries or ():
            if isinstance(entry, Chunks):
                fetched.setdefault(reply_id, []).append((entry.last, now))
        return entries

    fanout.aread = timed_aread  # cw.awatch reads with aread (a Redis fan-out has it)
    tailed: dict[int, int] = {}  # chunk's yield ns -> when the tail thread parsed it
    if os.environ.get("RXSCALE_TAIL_TIMES"):  # opt-in: a regex per chunk on the tail thread
        parse = fanout._tail._parse

        def timed_parse(raw_id: Any, fields: Any) -> Any:
            at, entry = parse(raw_id, fields)
            if isinstance(entry, Chunks):
                now = _now()
                for chunk in entry.chunks:
                    for _, stamp in STAMP.findall(chunk.text):
                        tailed[int(stamp)] = now
            return at, entry

        fanout._tail._parse = timed_parse

    async def listen() -> None:
        """Watch each reply the owners announce, from when it is announced (a task each)."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(cfg["redis"])
        at, ended = "0-0", 0
        tasks: list[asyncio.Task[None]] = []
        while ended < len(slots):
            found = await client.xread({_announcements(cfg): at}, count=1000, block=1000)
            for _, rows in found:
                for entry_id, fields in rows:
                    at = entry_id
                    slot, reply_id = int(fields[b"s"]), fields[b"r"].decode()
                    if slot not in slots:
                        continue
                    if reply_id:
                        starts[reply_id] = [int(fields[b"t"]), _now()]
                        tasks.append(asyncio.create_task(follow(reply_id)))
                    else:
                        ended += 1  # the stream made its last reply
        await client.aclose()
        await asyncio.gather(*tasks)

    async def follow(reply_id: str) -> None:
        nonlocal watched
        got = received[reply_id] = []
        for attempt in range(100):
            try:
                async for chunk in cw.awatch(reply_id):
                    if chunk.kind is ChunkKind.TEXT:
                        now = _now()
                        got.extend((int(a), int(b), now) for a, b in STAMP.findall(chunk.text))
            except ReplyNotFound:  # announced once begun: never expected
                failures.append(f"{reply_id}: not found at attempt {attempt}")
                await asyncio.sleep(0.01)
                continue
            except Exception as error:
                failures.append(f"{reply_id}: {type(error).__name__}: {error}")
            break
        watched += 1

    async def main() -> tuple[float, float]:
        start = await asyncio.to_thread(_wait_start)
        await _sleep_until(start)
        t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        await listen()
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), wall

    profile = os.environ.get("RXSCALE_WATCHER_PROFILE")
    profiles: list[Any] = []
    if profile and index == 0:  # every watch's thread, and the event loop's
        import cProfile

        from rxcontext.fanout import observe

        core = observe.watch_chunks

        def profiled(*args: Any, **kwargs: Any) -> Iterator[Any]:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.enable()
            try:
                yield from core(*args, **kwargs)
            finally:
                prof.disable()

        observe.watch_chunks = profiled  # type: ignore[assignment]
        with cProfile.Profile() as loop_prof:
            cpu, wall = asyncio.run(main())
        import pstats

        stats = pstats.Stats(loop_prof)
        for prof in profiles:
            stats.add(prof)
        stats.dump_stats(profile)
    else:
        cpu, wall = asyncio.run(main())
    store.close()
    out.write_text(
        json.dumps(
            {
                "role": "watcher",
                "worker": index,
                "pid": os.getpid(),
                "cpu": cpu,
                "wall": wall,
                "streams": len(slots),
                "replies": watched,
                "failures": failures,
                "received": received,
                "fetched": fetched,
                "tailed": tailed,
                "starts": starts,
            }
        )
    )


# -- the parent ---------------------------------------------------------------------------


def _pct(values: list[int] | list[float], scale: float = 1e-6) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) of ``values`` times ``scale``; ms for ns by default."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                "max": float("nan")}  # fmt: skip
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p + 0.999999) - 1))] * scale

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": ordered[-1] * scale,
    }


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Servers:
    """What the run cost the servers: CPU of its PostgreSQL backends (by pid, from
    ``pg_stat_activity``) and of the Redis server, and the database's transactions."""

    def __init__(self, admin_url: str, url: str, redis_url: str) -> None:
        import psycopg
        import redis

        self.admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
        self.dbname = url.rpartition("/")[2].partition("?")[0]
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.redis_pid = int(self.redis.info("server")["process_id"])

    def ping(self, until: float, every: float = 0.05) -> tuple[list[int], list[int]]:
        """Round trips (ns) of ``SELECT 1`` (on the maintenance database, so the run's own
        counts stay its own) and of Redis ``PING``, every ``every`` seconds until
        ``until`` (monotonic): what the servers answer in, apart from the library."""
        pg: list[int] = []
        rd: list[int] = []
        while time.monotonic() < until:
            t0 = _now()
            self.admin.execute("SELECT 1").fetchone()
            t1 = _now()
            self.redis.ping()
            t2 = _now()
            pg.append(t1 - t0)
            rd.append(t2 - t1)
            time.sleep(max(0.0, min(every, until - time.monotonic())))
        return pg, rd

    def sample(self) -> dict[str, Any]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.dbname,)
        ).fetchall()
        stats = self.admin.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted"
            " FROM pg_stat_database WHERE datname = %s",
            (self.dbname,),
        ).fetchone()
        return {
            "backends": {int(r[0]): _cpu_of(int(r[0])) for r in rows},
            "redis": _cpu_of(self.redis_pid),
            "stats": list(stats or (0, 0, 0, 0)),
            "t": time.monotonic(),
        }

    def cost(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        wall = after["t"] - before["t"]
        pg = sum(cpu - before["backends"].get(pid, 0.0) for pid, cpu in after["backends"].items())
        names = ("commits", "inserted", "updated", "deleted")
        return {
            "postgres_cpu": 100.0 * pg / wall,
            "backends": len(after["backends"]),
            "redis_cpu": 100.0 * (after["redis"] - before["redis"]) / wall,
            **{n: a - b for n, a, b in zip(names, after["stats"], before["stats"], strict=True)},
        }

    def close(self) -> None:
        self.admin.close()
        self.redis.close()


def _redis_cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def _spawn(role: str, index: int, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--index", str(index), "--result", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect(proc: subprocess.Popen[str], name: str, word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != word:
        raise SystemExit(f"{name} did not get ready (said {line!r}, exit {proc.poll()})")


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _wait(proc: subprocess.Popen[str], name: str, deadline: float, loads: list[float]) -> None:
    while proc.poll() is None:
        loads.append(os.getloadavg()[0])
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not finish")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run; returns the summary (see :func:`summarize`)."""
    began = time.monotonic()

    def phase(what: str) -> None:
        if args.verbose:
            print(f"{time.monotonic() - began:6.2f} s  {what}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="rxscale-") as tmp:
        owners = [
            (_spawn("owner", i, Path(tmp, f"owner-{i}.json")), f"owner-{i}")
            for i in range(args.workers)
        ]
        watchers = [
            (_spawn("watcher", i, Path(tmp, f"watcher-{i}.json")), f"watcher-{i}")
            for i in range(args.watchers)
        ]
        procs = owners + watchers
        drop: Callable[[], None] = lambda: None  # noqa: E731
        prefix = args.prefix or f"rxscale-{uuid.uuid4().hex[:10]}"
        try:
            url = args.url  # the processes import meanwhile
            if url is None:
                from rxcontext.store.postgres import PostgresStore

                url, drop = database(args.pg, "rxcscale")
                PostgresStore(url, pool_size=1).close()  # migrated once, before the processes
            cfg = {
                "url": url,
                "redis": args.redis,
                "prefix": prefix,
                "tag": uuid.uuid4().hex[:6],
                "streams": args.streams,
                "workers": args.workers,
                "watchers": args.watchers,
                "seconds": args.seconds,
                "interval": args.interval,
                "chunks": args.chunks,
                "pool": args.pool,
                "watcher_pool": args.watcher_pool,
                "flush_every": args.flush_every,
                "prepared_statements": args.prepared_statements,
                "cut_at_end": args.cut_at_end,
                "warmup": args.warmup,
            }
            cfg_path = Path(tmp, "config.json")
            cfg_path.write_text(json.dumps(cfg))
            phase("database ready")
            for proc, name in procs:
                _expect(proc, name, "imported")
                _send(proc, str(cfg_path))
            phase("processes imported")
            for proc, name in procs:
                _expect(proc, name, "ready")
            phase("processes ready")
            servers = Servers(args.pg, url, args.redis)
            idle_pg, idle_redis = servers.ping(time.monotonic() + min(1.0, args.seconds / 2))
            load_before = os.getloadavg()
            start = _now() + int(0.3e9)
            for proc, _ in procs:
                _send(proc, str(start))
            loads: list[float] = []
            deadline = time.monotonic() + args.seconds + 0.3 + GRACE
            t_start = time.monotonic() + 0.3
            time.sleep(0.3)
            server_before = servers.sample()
            run_pg, run_redis = servers.ping(t_start + min(1.0, args.seconds / 2))
            server_during = servers.sample()  # every backend is open by now
            server_before["backends"] = {
                pid: server_before["backends"].get(pid, 0.0) for pid in server_during["backends"]
            }
            more = servers.ping(t_start + args.seconds - 0.1)
            run_pg, run_redis = run_pg + more[0], run_redis + more[1]
            server_cost = servers.cost(server_before, servers.sample())
            servers.close()
            for proc, name in owners:
                _wait(proc, name, deadline, loads)
            phase("owners done")
            results = [json.loads(Path(tmp, f"{n}.json").read_text()) for _, n in owners]
            for proc, name in watchers:
                _wait(proc, name, deadline, loads)
            phase("watchers done")
            results += [json.loads(Path(tmp, f"{n}.json").read_text()) for _, n in watchers]
            summary = summarize(args, results, load_before, [*loads, os.getloadavg()[0]])
            summary["servers"] = server_cost
            summary["pg_ping_idle"] = _pct(idle_pg)
            summary["pg_ping_run"] = _pct(run_pg)
            summary["redis_ping_idle"] = _pct(idle_redis)
            summary["redis_ping_run"] = _pct(run_redis)
            return summary
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            phase("run over")
            try:
                if not args.prefix:
                    _redis_cleanup(args.redis, prefix)
            finally:
                drop()
            phase("cleaned up")


def summarize(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    load_before: tuple[float, float, float],
    loads: list[float],
) -> dict[str, Any]:
    owners = [r for r in results if r["role"] == "owner"]
    watchers = [r for r in results if r["role"] == "watcher"]
    delivered: dict[str, list[int]] = {}
    for o in owners:
        delivered.update(o["delivered"])
    to_watcher: list[int] = []  # delivered to the owner -> received by the watcher
    to_watcher_on: list[int] = []  # the same, for chunks 10 and on of a reply (the tail)
    yield_to_watcher: list[int] = []
    yield_to_owner: list[int] = []
    received_chunks = 0
    for reply in delivered:
        seen: dict[int, int] = {}
        for w in watchers:
            for seq, _, recv in w["received"].get(reply, []):
                seen.setdefault(seq, recv)
        received_chunks += len(seen)
    lo, hi = owners[0]["window"]  # every owner has the same
    whole = [dict(w) for w in watchers]  # the chunk figures: chunks yielded in the window
    watchers = [
        {
            **w,
            "received": {
                reply: [c for c in got if lo <= c[1] <= hi] for reply, got in w["received"].items()
            },
        }
        for w in watchers
    ]
    in_window = len({(r, c[0]) for w in watchers for r, got in w["received"].items() for c in got})
    seconds = (min(hi, 2**62) - lo) / 1e9 if lo else args.seconds
    for w in watchers:
        for reply, got in w["received"].items():
            times = delivered.get(reply, [])
            for seq, stamp, recv in got:
                yield_to_watcher.append(recv - stamp)
                if seq < len(times):
                    to_watcher.append(recv - times[seq])
                    if seq >= 10:
                        to_watcher_on.append(recv - times[seq])
    # model yield -> owner's async for (the owner's own path), from the chunk texts
    for w in watchers:
        for reply, got in w["received"].items():
            times = delivered.get(reply, [])
            yield_to_owner.extend(times[seq] - stamp for seq, stamp, _ in got if seq < len(times))
    to_fetch: list[int] = []  # owner's async for -> the watcher's fan-out read returned it
    fetch_to_recv: list[int] = []  # that read -> the watcher's async for
    for w in watchers:
        for reply, got in w["received"].items():
            times = delivered.get(reply, [])
            reads = w["fetched"].get(reply, [])
            i = 0
            for seq, _, recv in got:  # fan-out seqs count from 1: text chunk k is seq k + 1
                while i < len(reads) and reads[i][0] < seq + 1:
                    i += 1
                if i < len(reads) and seq < len(times):
                    to_fetch.append(reads[i][1] - times[seq])
                    fetch_to_recv.append(recv - reads[i][1])
    to_sent: list[int] = []  # owner's async for -> the owner's send carrying it returned
    sent_to_tail: list[int] = []  # that -> the watcher's tail thread parsed it
    sent_at: dict[int, int] = {}
    for o in owners:
        sent_at.update({int(k): v for k, v in o.get("sent", {}).items()})
    to_tail: list[int] = []  # owner's async for -> the watcher's tail thread parsed it
    for w in watchers:
        tailed = {int(k): v for k, v in w.get("tailed", {}).items()}
        for reply, got in w["received"].items():
            times = delivered.get(reply, [])
            to_tail.extend(
                tailed[stamp] - times[seq]
                for seq, stamp, _ in got
                if stamp in tailed and seq < len(times)
            )
            for seq, stamp, _ in got:
                if stamp in sent_at and seq < len(times):
                    to_sent.append(sent_at[stamp] - times[seq])
                    if stamp in tailed:
                        sent_to_tail.append(tailed[stamp] - sent_at[stamp])
    heard: list[int] = []  # owner's on_start -> the watcher process hears of the reply
    first_read: list[int] = []  # that -> the reply's watch's first fan-out read returned
    for w in watchers:
        for times in w.get("starts", {}).values():
            if lo <= times[0] <= hi:
                heard.append(times[1] - times[0])
                if len(times) == 3:
                    first_read.append(times[2] - times[1])
    gaps: list[int] = []
    sends: list[int] = []
    for o in owners:
        starts = [t for t, _ in o["flushes"]]
        gaps += [b - a for a, b in itertools.pairwise(starts)]
        sends += [d for _, d in o["flushes"]]
    chunks = sum(o["chunks"] for o in owners)
    wall = max(o["wall"] for o in owners)
    return {
        "streams": args.streams,
        "workers": args.workers,
        "watchers": args.watchers,
        "seconds": args.seconds,
        "interval": args.interval,
        "target_chunks_per_s": args.streams / args.interval,
        "chunks": chunks,
        "chunks_in_window": in_window,
        "window_seconds": seconds,
        "chunks_per_s": in_window / seconds if lo else chunks / args.seconds,
        "wall": wall,
        "replies": sum(o["replies"] for o in owners),
        "replies_watched": sum(w["replies"] for w in whole),
        "chunks_received": received_chunks,
        "failures": [f for r in results for f in r["failures"]],
        "fanout_drained": all(o["fanout_drained"] for o in owners),
        "commit_e2e": _pct([x for o in owners for x in o["commit_e2e"]]),
        "commit_call": _pct([x for o in owners for x in o["commit_call"]]),
        "executor_wait": _pct([x for o in owners for x in o["executor_wait"]]),
        "commit_before": _pct([x for o in owners for x in o["commit_before"]]),
        "commit_after": _pct([x for o in owners for x in o["commit_after"]]),
        "checkpoint_call": _pct([x for o in owners for x in o["checkpoint_call"]]),
        "begin_call": _pct([x for o in owners for x in o["begin_call"]]),
        "late": _pct([x for o in owners for x in o["late"]]),
        "owner_to_watcher": _pct(to_watcher),
        "owner_to_watcher_on": _pct(to_watcher_on),
        "yield_to_watcher": _pct(yield_to_watcher),
        "yield_to_owner": _pct(yield_to_owner),
        "owner_to_read": _pct(to_fetch),
        "owner_to_tail": _pct(to_tail),
        "owner_to_sent": _pct(to_sent),
        "sent_to_tail": _pct(sent_to_tail),
        "read_to_watcher": _pct(fetch_to_recv),
        "watch_heard": _pct(heard),
        "watch_first_read": _pct(first_read),
        "flush_gap": _pct(gaps),
        "prompt_wall": _pct([x for o in owners for x in o["prompt_wall"]]),
        "between": _pct([x for o in owners for x in o["between"]]),
        "flush_call": _pct(sends),
        "cpu": {
            f"{r['role']}-{r['worker']}": 100.0 * r["cpu"] / r["wall"] if r["wall"] else 0.0
            for r in results
        },
        "load_before": list(load_before),
        "load_max": max(loads) if loads else float("nan"),
        "load_after": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
    }


ROWS = (
    ("commit: DONE yielded → `async for` ends", "commit_e2e"),
    ("commit: `store.commit_reply` call", "commit_call"),
    ("… DONE yielded → that call starts", "commit_before"),
    ("… that call returns → `async for` ends", "commit_after"),
    ("owners' default executor: submitted → started (RXSCALE_EXECUTOR_TIMES=1)", "executor_wait"),
    ("checkpoint: `store.save_checkpoints` call", "checkpoint_call"),
    ("begin: `store.begin_reply` call", "begin_call"),
    ("chunk: owner's `async for` → remote watcher", "owner_to_watcher"),
    ("… chunks 10 and on of a reply (the watch's tail)", "owner_to_watcher_on"),
    ("chunk: model yield → remote watcher", "yield_to_watcher"),
    ("chunk: model yield → owner's `async for`", "yield_to_owner"),
    ("chunk: owner's `async for` → its send returned (RXSCALE_TAIL_TIMES=1)", "owner_to_sent"),
    ("chunk: that send returned → watcher's tail thread (RXSCALE_TAIL_TIMES=1)", "sent_to_tail"),
    ("chunk: owner's `async for` → watcher's tail thread (RXSCALE_TAIL_TIMES=1)", "owner_to_tail"),
    ("chunk: owner's `async for` → watcher's fan-out read", "owner_to_read"),
    ("chunk: watcher's fan-out read → its `async for`", "read_to_watcher"),
    ("watch start: owner's `on_start` → the watcher process hears of the reply", "watch_heard"),
    ("watch start: … → the watch's first fan-out read returns", "watch_first_read"),
    ("fan-out writer: time between sends (owners)", "flush_gap"),
    ("fan-out writer: one send (owners)", "flush_call"),
    ("`await asyncio.to_thread(cw.add_prompt, ...)`", "prompt_wall"),
    ("reply stored → the next one's first chunk delivered", "between"),
    ("chunk yield lateness against its 50 ms grid", "late"),
)


def report(s: dict[str, Any]) -> str:
    """The run as Markdown: a table of latencies, then throughput, CPU and load."""
    lines = [
        "| measure (ms) | n | p50 | p95 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key in ROWS:
        p = s[key]
        lines.append(
            f"| {label} | {p['n']} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f}"
            f" | {p['max']:.1f} |"
        )
    for label, key in (
        ("PostgreSQL `SELECT 1` round trip, before the run", "pg_ping_idle"),
        ("PostgreSQL `SELECT 1` round trip, during the run", "pg_ping_run"),
        ("Redis `PING` round trip, before the run", "redis_ping_idle"),
        ("Redis `PING` round trip, during the run", "redis_ping_run"),
    ):
        p = s.get(key)
        if p:
            lines.append(
                f"| {label} | {p['n']} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f}"
                f" | {p['max']:.1f} |"
            )
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in s["cpu"].items())
    srv = s["servers"]
    lines += [
        "",
        f"Chunks: {s['chunks']} in all; {s['chunks_in_window']} yielded in the measured"
        f" {s['window_seconds']:.3g} s = {s['chunks_per_s']:.0f}/s"
        f" (target {s['target_chunks_per_s']:.0f}/s); replies {s['replies']} (watched"
        f" {s['replies_watched']}); chunks received by watchers {s['chunks_received']};"
        f" failures {len(s['failures'])}; owners' wall {s['wall']:.1f} s.",
        f"CPU over the run: {cpu}; PostgreSQL backends ({srv['backends']})"
        f" {srv['postgres_cpu']:.0f}%, redis-server {srv['redis_cpu']:.0f}% (all its"
        f" clients). Database: {srv['commits']} transactions committed"
        f" ({srv['commits'] / s['seconds']:.0f}/s), {srv['inserted']} rows inserted,"
        f" {srv['updated']} updated. Load average before {s['load_before'][0]:.2f},"
        f" max during {s['load_max']:.2f}, after {s['load_after']:.2f}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--watchers", type=int, default=1, help="watcher processes")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--chunks", type=int, default=40, help="mean text chunks per reply")
    parser.add_argument("--pool", type=int, default=4, help="owners' pool_size (default 4)")
    parser.add_argument("--watcher-pool", type=int, default=4, help="watchers' pool_size")
    parser.add_argument(
        "--flush-every", type=float, default=0.02, help="owners' fan-out send interval (s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds after the start left out of the figures"
    )
    parser.add_argument(
        "--cut-at-end",
        action="store_true",
        help="cut every stream's last reply to end at --seconds (all at once), and measure"
        " the whole run: the method before 2026-12-03 18:00 UTC",
    )
    parser.add_argument(
        "--prepared-statements",
        action="store_true",
        help="open the stores with prepared_statements=True (a direct connection)",
    )
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() in each process once set up"
    )
    parser.add_argument("--pg", default=PG_ADMIN, help="maintenance URL of the server")
    parser.add_argument("--redis", default=REDIS)
    parser.add_argument("--verbose", action="store_true", help="phases' times on stderr")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--role", choices=("owner", "watcher"), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help="an existing database to use (not dropped)")
    parser.add_argument("--prefix", default=None, help="a Redis key prefix (not cleaned up)")
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        (run_owner if args.role == "owner" else run_watcher)(args.index, args.result)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # its results are written; the interpreter's teardown took seconds here
    if args.streams < args.workers or args.streams < args.watchers:
        parser.error("need at least one stream per process")
    if args.gc_freeze:
        os.environ["RXSCALE_GC_FREEZE"] = "1"  # the processes' environment
    summary = run(args)
    print(report(summary))
    for failure in summary["failures"][:10]:
        print("failure:", failure)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
